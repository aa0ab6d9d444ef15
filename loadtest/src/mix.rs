//! The `mixed` scenario's mix: which [`Action`] each iteration is, by weight, interleaved
//! evenly (a table of weights and the round built from it).

/// One iteration of the `mixed` scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// create only.
    Create,
    /// The whole `lifecycle` iteration (4 requests).
    Lifecycle,
    /// create → confirm with automatic capture (the PSP captures; status `succeeded`).
    CreateConfirm,
    /// `GET /v1/payments/{id}` of a payment this worker created (a create if it has none yet).
    Get,
    /// `GET /v1/payments?limit=10` of a merchant.
    List,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Lifecycle => "lifecycle",
            Self::CreateConfirm => "create_confirm",
            Self::Get => "get",
            Self::List => "list",
        }
    }
}

/// Weights of the `mixed` scenario, per iteration (they sum to 100, so they read as
/// percentages of iterations): mostly plain creates as in checkout traffic, a share of
/// full lifecycles and of automatic-capture confirms, and merchant reads.
pub const MIX: [(Action, u32); 5] = [
    (Action::Create, 50),
    (Action::Lifecycle, 15),
    (Action::CreateConfirm, 15),
    (Action::Get, 15),
    (Action::List, 5),
];

/// `create 50, lifecycle 15, …`, for the report.
pub fn mix_description() -> String {
    let parts: Vec<String> = MIX
        .iter()
        .map(|(action, weight)| format!("{} {weight}", action.name()))
        .collect();
    parts.join(", ")
}

/// Slots in one round of the mix: the weights sum to this, so each round holds every
/// action exactly its weight times.
pub const MIX_ROUND: usize = 100;

/// One round of the mix, interleaved by smooth weighted round-robin (nginx's upstream
/// balancing): every action appears exactly its weight times, spread evenly rather than
/// drawn at random, so a short run still sends every kind and two runs send the same mix.
pub fn mix_round() -> Vec<Action> {
    let total: i64 = MIX.iter().map(|(_, w)| i64::from(*w)).sum();
    let mut current = [0i64; MIX.len()];
    let mut round = Vec::with_capacity(MIX_ROUND);
    for _ in 0..MIX_ROUND {
        for (credit, (_, weight)) in current.iter_mut().zip(MIX) {
            *credit += i64::from(weight);
        }
        let mut best = 0;
        for (i, credit) in current.iter().enumerate() {
            if *credit > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        round.push(MIX[best].0);
    }
    round
}

/// Where connection `connection` of `connections` starts in [`mix_round`]: the
/// connections start evenly apart, so together they walk the whole round from the start.
pub fn mix_phase(connection: u32, connections: u32) -> usize {
    let connections = usize::try_from(connections.max(1)).unwrap_or(1);
    let connection = usize::try_from(connection).unwrap_or(0) % connections;
    connection * MIX_ROUND / connections
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn counts(actions: &[Action]) -> BTreeMap<&'static str, u32> {
        let mut seen = BTreeMap::new();
        for action in actions {
            *seen.entry(action.name()).or_default() += 1;
        }
        seen
    }

    #[test]
    fn a_round_of_the_mix_holds_each_action_exactly_its_weight_times() {
        assert_eq!(MIX.iter().map(|(_, w)| w).sum::<u32>(), MIX_ROUND as u32);
        let round = mix_round();
        assert_eq!(round.len(), MIX_ROUND);
        let seen = counts(&round);
        for (action, weight) in MIX {
            assert_eq!(seen.get(action.name()).copied(), Some(weight), "{seen:?}");
        }
        assert_eq!(
            mix_description(),
            "create 50, lifecycle 15, create_confirm 15, get 15, list 5"
        );
    }

    #[test]
    fn every_action_appears_within_a_fifth_of_a_round_from_any_point() {
        // Interleaved, not blocked: the rarest action (5 of 100) comes every 20 slots, so
        // any 20 consecutive iterations of one connection hold every action.
        let round = mix_round();
        for start in 0..MIX_ROUND {
            let window: Vec<Action> = (0..20).map(|i| round[(start + i) % MIX_ROUND]).collect();
            assert_eq!(counts(&window).len(), MIX.len(), "from slot {start}");
        }
    }

    #[test]
    fn connections_start_evenly_apart_in_the_round() {
        assert_eq!(mix_phase(0, 4), 0);
        assert_eq!(mix_phase(1, 4), 25);
        assert_eq!(mix_phase(3, 4), 75);
        assert_eq!(mix_phase(5, 4), 25);
        assert_eq!(mix_phase(0, 0), 0);
    }
}
