-- Partition leases (DESIGN.md, "Cluster"): one row per journal partition that has ever had an
-- owner. A node takes a partition only when the row is free (no owner: never taken or
-- released) or expired, and raises `epoch` when it does; every time is the database's clock.
CREATE TABLE IF NOT EXISTS partition_leases (
    partition     INT PRIMARY KEY,
    owner_node_id TEXT,
    owner_url     TEXT,
    epoch         BIGINT NOT NULL DEFAULT 0,
    expires_at    TIMESTAMPTZ,
    renewed_at    TIMESTAMPTZ
);

-- The nodes taking part in the fair share: a node counts while heartbeat_at + lease > now()
-- and it is not leaving (a node shutting down marks itself leaving first).
CREATE TABLE IF NOT EXISTS cluster_nodes (
    node_id      TEXT PRIMARY KEY,
    url          TEXT NOT NULL,
    heartbeat_at TIMESTAMPTZ NOT NULL,
    leaving      BOOLEAN NOT NULL DEFAULT FALSE
);
