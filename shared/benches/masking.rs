//! Benchmark: throughput of the output path (mask each line, keep the tail) with 100 registered
//! secrets. Goal: at least 200 MB/s of log text. Run: `cargo bench -p shared --bench masking`.

use std::time::Instant;

use shared::masking::Masker;
use shared::report::LogTail;

fn main() {
    // 100 secrets of 12-40 characters, with the characters passwords hold.
    let alphabet: Vec<char> =
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789$#:@/\\'\" -_".chars().collect();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let secrets: Vec<(String, String)> = (0..100)
        .map(|i| {
            let len = 12 + (next() % 29) as usize;
            let value: String = (0..len).map(|_| alphabet[(next() % alphabet.len() as u64) as usize]).collect();
            (format!("SECRET_{i}"), value)
        })
        .collect();
    let masker = Masker::new(secrets.iter().map(|(k, v)| (k.as_str(), v.as_str())));

    // A 16 MiB corpus of log lines like the CLI's; one line in 50 holds a secret. The runner masks
    // output in blocks of whole lines of up to 64 KiB (one read of the pipe).
    let templates = [
        "[2026-12-03 18:07:17,103] INFO     {datahub.ingestion.run.pipeline:398} - Sink configured successfully.",
        "[2026-12-03 18:07:17,873] INFO     {datahub.ingestion.source.sql.sql_common:613} - Processing table shop.sales.orders",
        "[2026-12-03 18:07:18,017] DEBUG    {datahub.emitter.rest_emitter:412} - Attempting to emit aspect schemaMetadata for urn:li:dataset:(urn:li:dataPlatform:postgres,shop.inventory.items,PROD)",
        "{'cli_version': '1.7.0.17', 'cli_entry_location': '/opt/datahub/venvs/postgres-bundled/lib/python3.11/site-packages/datahub/__init__.py'}",
    ];
    let mut blocks: Vec<Vec<u8>> = vec![Vec::new()];
    let mut bytes = 0usize;
    let mut lines = 0usize;
    let mut secret_lines = 0usize;
    while bytes < 16 << 20 {
        let mut line = templates[lines % templates.len()].to_owned();
        if lines.is_multiple_of(50) {
            line.push_str(" password=");
            line.push_str(&secrets[lines % secrets.len()].1);
            secret_lines += 1;
        }
        line.push('\n');
        if blocks.last().is_some_and(|b| b.len() + line.len() > 64 * 1024) {
            blocks.push(Vec::new());
        }
        if let Some(b) = blocks.last_mut() {
            b.extend_from_slice(line.as_bytes());
        }
        bytes += line.len();
        lines += 1;
    }

    let rounds = 16;
    let mut tail = LogTail::default();
    let mut markers = 0usize;
    let start = Instant::now();
    for _ in 0..rounds {
        for block in &blocks {
            let masked = masker.mask_bytes_lossy(block);
            for line in masked.lines() {
                tail.push(line);
            }
            markers += masked.len();
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let total = (bytes * rounds) as f64;
    let check: usize = blocks.iter().map(|b| masker.mask_bytes_lossy(b).matches("***REDACTED:").count()).sum();
    assert_eq!(check, secret_lines, "every secret-bearing line was masked");
    assert!(markers > 0);
    assert!(!tail.text().contains(&secrets[0].1), "no secret survives");
    println!(
        "masking: {} secrets, {:.0} MiB of log text ({} lines) in {:.2} s = {:.0} MB/s (goal >= 200 MB/s)",
        secrets.len(),
        total / (1 << 20) as f64,
        lines * rounds,
        secs,
        total / 1e6 / secs,
    );
}
