//! Customer e-mails, rendered and sent to a real SMTP server (aiosmtpd).

use super::*;
use std::process::{Child, Command, Stdio};

/// A real SMTP server (tests/support/smtp_sink.py, aiosmtpd) writing what it gets to a file.
struct SmtpSink {
    child: Child,
    port: u16,
    out: std::path::PathBuf,
}

impl SmtpSink {
    fn start() -> Self {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("payrail-it-smtp-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).expect("smtp dir");
        let out = dir.join("smtp.jsonl");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/smtp_sink.py");
        let child = Command::new("python3")
            .args([script, "--port", &port.to_string(), "--out"])
            .arg(&out)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("smtp.log")).expect("smtp log"))
            .spawn()
            .expect("python3 runs tests/support/smtp_sink.py");
        let mut sink = Self { child, port, out };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = sink.child.try_wait() {
                panic!(
                    "SMTP sink exited with {status} (is aiosmtpd installed? pip install aiosmtpd): {}",
                    std::fs::read_to_string(dir.join("smtp.log")).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "SMTP sink did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        sink
    }

    fn messages(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_emails_are_rendered_and_sent_over_smtp() {
    let smtp = SmtpSink::start();
    let port = smtp.port.to_string();
    // No webhook_url: e-mails only.
    let w = world(
        "ntf_email",
        None,
        &[
            ("PAYRAIL__NOTIFICATION__SMTP__HOST", "127.0.0.1"),
            ("PAYRAIL__NOTIFICATION__SMTP__PORT", &port),
            (
                "PAYRAIL__NOTIFICATION__SMTP__FROM",
                "Shop Payments <payments@shop.example>",
            ),
        ],
    )
    .await;
    let id = w
        .create(
            r#"{"amount":2500,"currency":"eur","customer_email":"buyer@example.com","order_no":"A-17"}"#,
        )
        .await;
    let r = w
        .post(
            &w.key,
            &format!("/v1/payments/{id}/confirm"),
            r#"{"payment_method":"pm_card_visa"}"#,
        )
        .await;
    assert_eq!(r.body["status"], "succeeded", "{}", r.body);
    let r = w
        .post(
            &w.key,
            &format!("/v1/payments/{id}/refunds"),
            r#"{"amount":500}"#,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    // A payment without customer_email gets no e-mail.
    let silent = w.create(r#"{"amount":100,"currency":"eur"}"#).await;

    let data = w
        .wait_notifications(&id, "e-mails delivered", |d| {
            d.len() == 3 && d.iter().all(|n| n["status"] == "delivered")
        })
        .await;
    let types: Vec<&str> = data.iter().map(|n| n["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        ["payment.created", "payment.succeeded", "refund.succeeded"]
    );
    assert!(
        data.iter().all(|n| n["channel"] == "email"),
        "no webhooks without webhook_url"
    );
    assert!(data
        .iter()
        .all(|n| n["attempts"].as_array().unwrap().len() == 1
            && n["attempts"][0]["error"] == Value::Null));

    let messages = eventually(Duration::from_secs(10), || async {
        let m = smtp.messages();
        (m.len() >= 3).then_some(m)
    })
    .await
    .expect("three messages at the SMTP server");
    assert_eq!(messages.len(), 3, "{messages:?}");
    for m in &messages {
        assert_eq!(m["mail_from"], "payments@shop.example");
        assert_eq!(m["rcpt_tos"], serde_json::json!(["buyer@example.com"]));
        let content = m["content"].as_str().unwrap();
        assert!(content.contains(&id), "{content}");
        assert!(!content.contains("{{"), "placeholders rendered: {content}");
    }
    let content = |i: usize| messages[i]["content"].as_str().unwrap().to_string();
    assert!(
        content(0).contains("received your payment request for 25.00 EUR"),
        "{}",
        content(0)
    );
    assert!(content(0).contains("order A-17"), "{}", content(0));
    assert!(
        content(1).contains("Subject: ntf_email: payment of 25.00 EUR succeeded"),
        "{}",
        content(1)
    );
    assert!(content(2).contains("5.00 EUR refunded"), "{}", content(2));

    let r = w
        .notifications(&w.key, &format!("?payment_id={silent}"))
        .await;
    assert_eq!(r.body["data"].as_array().unwrap().len(), 0, "{}", r.body);
}
