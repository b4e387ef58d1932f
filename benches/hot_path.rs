//! Criterion benchmarks of the per-request user-space work: head parse + framing checks +
//! rewrite, executor selection, snapshot pickup, and health body parsing.

use std::collections::HashMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use opr_proxy::internals::{
    parse_health, parse_request, write_request_head, Addressing, Algorithm, ExecutorStatus,
    HeaderRef, Picker, RequestRewrite, RuntimeState, Snapshot, SnapshotReader,
};
use opr_proxy::Board;

const REQUEST: &[u8] = b"POST /v1/runtimes/fn-abc/executions?async=false HTTP/1.1\r\n\
Host: executor.internal\r\n\
User-Agent: Appwrite/1.6\r\n\
Accept: */*\r\n\
Accept-Encoding: gzip, deflate\r\n\
Content-Type: application/json\r\n\
Content-Length: 2\r\n\
Authorization: Bearer proxy-secret-key\r\n\
Connection: keep-alive\r\n\
X-Forwarded-For: 203.0.113.7\r\n\
x-opr-runtime-id: fn-abc\r\n\
x-opr-addressing-method: anycast-efficient\r\n\
X-Request-Id: 5f0c1d2e-aaaa-bbbb-cccc-0123456789ab\r\n\r\n{}";

fn head(c: &mut Criterion) {
    let mut headers: Vec<HeaderRef> = Vec::with_capacity(32);
    let mut out = Vec::with_capacity(1024);
    c.bench_function("head/parse+rewrite 12 headers", |b| {
        b.iter(|| {
            let head = parse_request(black_box(REQUEST), &mut headers)
                .unwrap()
                .unwrap();
            out.clear();
            let rw = RequestRewrite {
                authorization: b"Bearer executor-secret",
                forwarded_for: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9)),
                executor_host: "10.0.0.2:80",
                dev_executor_hostname: None,
                strip_expect: false,
            };
            write_request_head(&mut out, REQUEST, &head, &headers, &rw);
            black_box(out.len())
        })
    });
}

fn snapshot(n: usize) -> Snapshot {
    Snapshot::new(
        1,
        (0..n)
            .map(|i| ExecutorStatus {
                hostname: format!("10.0.{}.{}:80", i / 250, i % 250),
                online: i % 7 != 3,
                state_status: Some("pass".into()),
                usage: Some((i * 13 % 100) as u8),
                runtimes: (0..20)
                    .map(|r| {
                        (
                            format!("rt-{}", (i + r) % 50),
                            RuntimeState {
                                status: "pass".into(),
                                usage: (r * 7 % 100) as u8,
                            },
                        )
                    })
                    .collect::<HashMap<_, _>>(),
                addrs: vec![],
                last_check: None,
                last_error: None,
                ..ExecutorStatus::default()
            })
            .collect(),
    )
}

fn selection(c: &mut Criterion) {
    let mut group = c.benchmark_group("select");
    for n in [3usize, 30, 300] {
        let snap = snapshot(n);
        for (name, algorithm) in [
            ("round-robin", Algorithm::RoundRobin),
            ("random", Algorithm::Random),
            ("first", Algorithm::First),
            ("last", Algorithm::Last),
            ("least-request", Algorithm::LeastRequest),
            ("p2c", Algorithm::P2c),
            ("affinity", Algorithm::Affinity),
        ] {
            let picker = Picker::new(algorithm, n, 7);
            group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter(|| picker.select(&snap, Addressing::AnycastEfficient, None, |_| false))
            });
            group.bench_with_input(
                BenchmarkId::new(format!("{name}+runtime"), n),
                &n,
                |b, _| {
                    b.iter(|| {
                        picker.select(
                            &snap,
                            Addressing::AnycastEfficient,
                            Some(black_box("rt-7")),
                            |_| false,
                        )
                    })
                },
            );
        }
        // Every executor too busy: the tiers fall through to "online".
        let mut busy = snapshot(n);
        for e in &mut busy.executors {
            e.usage = Some(95);
        }
        let picker = Picker::new(Algorithm::RoundRobin, n, 7);
        group.bench_with_input(BenchmarkId::new("tier-fallback", n), &n, |b, _| {
            b.iter(|| picker.select(&busy, Addressing::AnycastEfficient, Some("rt-1"), |_| false))
        });
    }
    group.finish();
}

fn pickup(c: &mut Criterion) {
    let board = Board::new(snapshot(30));
    let mut reader = SnapshotReader::new(board);
    c.bench_function("snapshot/pickup unchanged", |b| {
        b.iter(|| black_box(reader.current().generation))
    });
}

fn health(c: &mut Criterion) {
    let mut body = String::from(r#"{"status":"pass","usage":37,"runtimes":{"#);
    for i in 0..50 {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&format!(
            r#""runtime-{i}":{{"status":"pass","usage":{}}}"#,
            i % 100
        ));
    }
    body.push_str("}}");
    c.bench_function("health/parse 50 runtimes", |b| {
        b.iter(|| black_box(parse_health(200, black_box(body.as_bytes()))))
    });
    c.bench_function("health/parse plain OK", |b| {
        b.iter(|| black_box(parse_health(200, black_box(b"OK"))))
    });
}

criterion_group!(benches, head, selection, pickup, health);
criterion_main!(benches);
