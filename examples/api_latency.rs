//! Latency of the HTTP API on a long history (run by
//! `benches/api_latency.sh`).
//!
//! Fills a store with synthetic history (default 100 models x 1,000 runs =
//! 100,000 runs of 100 prompts = 10,000,000 per-prompt results), prints its
//! size on disk, then 16 concurrent clients measure p50/p99 of
//! - `GET /api/v1/runs?model=...&limit=50` (a range scan on the index),
//! - `GET /api/v1/runs/{id}` (the Run document with its baseline),
//! - `GET /api/v1/runs/{id}/results?category=...&min_score=...` (filtered),
//!
//! against two references measured in the same run: a static asset (the
//! cost of the HTTP stack and its middleware alone) and listing a model's runs by scanning all
//! runs (what the index avoids).
//!
//! Usage: api_latency DIR [MODELS RUNS_PER_MODEL PROMPTS CLIENTS REQUESTS]

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use safedrift::api::{self, Api};
use safedrift::config;
use safedrift::store::{RunFilter, Store};
use safedrift_testkit::history as sample;

fn arg(args: &[String], i: usize, default: usize) -> usize {
    args.get(i)
        .map_or(default, |a| a.parse().expect("a number"))
}

fn dir_size(path: &std::path::Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(
        args.get(1)
            .expect("usage: api_latency DIR [MODELS RUNS_PER_MODEL PROMPTS CLIENTS REQUESTS]"),
    );
    let models = arg(&args, 2, 100);
    let per_model = arg(&args, 3, 1000);
    let prompts = arg(&args, 4, 100);
    let clients = arg(&args, 5, 16);
    let requests = arg(&args, 6, 4000);

    let text = format!(
        "data_dir = {:?}\n[api]\nmax_concurrency = 64\n",
        dir.display().to_string()
    );
    let config = config::parse(&text, &config::Source::Embedded).expect("config");
    let store = Store::open(&config.data_dir).expect("store");
    if store.runs_len().unwrap() == 0 {
        let t = Instant::now();
        let shape = sample::Shape {
            models,
            checkpoints_per_model: per_model - 1,
            prompts_per_run: prompts,
            real_drift: false,
            seed: 1,
        };
        let (runs, results) = sample::fill(&store, &shape).expect("fill");
        store.flush().await.unwrap();
        println!(
            "filled {runs} runs, {results} results in {:.0} s",
            t.elapsed().as_secs_f64()
        );
    }
    let runs = store.runs_len().unwrap();
    println!(
        "store: {runs} runs, {:.2} GiB on disk at {}",
        dir_size(&dir) as f64 / (1u64 << 30) as f64,
        dir.display()
    );

    // The index against a scan of every run, once each.
    let model = "directory:acme/assistant-07".to_string();
    let t = Instant::now();
    let page = store
        .list_runs(
            &RunFilter {
                model: Some(model.clone()),
                ..Default::default()
            },
            50,
            None,
        )
        .unwrap();
    let indexed = t.elapsed();
    let t = Instant::now();
    let scanned: Vec<_> = store
        .runs()
        .unwrap()
        .into_iter()
        .filter(|r| r.model.spec == model)
        .collect();
    let full = t.elapsed();
    assert_eq!(page.runs.len(), 50.min(scanned.len()));
    println!(
        "list 50 runs of one model: index {:.2} ms, scan of all runs {:.0} ms ({:.0}x)",
        indexed.as_secs_f64() * 1000.0,
        full.as_secs_f64() * 1000.0,
        full.as_secs_f64() / indexed.as_secs_f64()
    );

    let app = api::app(Api::new(store, Arc::new(config)).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    type MakePath = fn(&mut rand::rngs::StdRng, usize, usize) -> String;
    let kinds: [(&str, MakePath); 4] = [
        ("GET /assets/app.css (reference)", |_, _, _| {
            "/assets/app.css".into()
        }),
        ("GET /api/v1/runs?model=...&limit=50", |rng, models, _| {
            format!(
                "/api/v1/runs?model=directory:acme/assistant-{:02}&limit=50",
                rng.gen_range(0..models)
            )
        }),
        ("GET /api/v1/runs/{id}", |rng, models, per| {
            format!(
                "/api/v1/runs/r_sample{:04}c{:07}",
                rng.gen_range(0..models),
                rng.gen_range(0..per - 1)
            )
        }),
        (
            "GET /api/v1/runs/{id}/results?category=&min_score=",
            |rng, models, per| {
                let cat = sample::CATEGORIES[rng.gen_range(0..sample::CATEGORIES.len())];
                format!(
                    "/api/v1/runs/r_sample{:04}c{:07}/results?category={cat}&min_score=1&limit=50",
                    rng.gen_range(0..models),
                    rng.gen_range(0..per - 1)
                )
            },
        ),
    ];
    println!("{clients} concurrent clients, {requests} requests per route");
    println!(
        "{:<52} {:>9} {:>9} {:>9} {:>12}",
        "request", "p50 ms", "p99 ms", "max ms", "p99/static"
    );
    let mut reference_p99 = None;
    for (name, make) in kinds {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(clients)
            .build()
            .unwrap();
        // Warm up the connections and the page cache a little.
        for _ in 0..clients {
            let _ = client
                .get(format!("http://{addr}/assets/app.css"))
                .send()
                .await;
        }
        let per_client = requests / clients;
        let mut tasks = Vec::new();
        for c in 0..clients {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(c as u64);
                let mut lat = Vec::with_capacity(per_client);
                for _ in 0..per_client {
                    let path = make(&mut rng, models, per_model);
                    let t = Instant::now();
                    let r = client
                        .get(format!("http://{addr}{path}"))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200, "{path}");
                    let _ = r.bytes().await.unwrap();
                    lat.push(t.elapsed());
                }
                lat
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all.sort();
        let (p50, p99, max) = (pct(&all, 0.50), pct(&all, 0.99), pct(&all, 1.0));
        let reference = *reference_p99.get_or_insert(p99);
        println!(
            "{name:<52} {p50:>9.2} {p99:>9.2} {max:>9.2} {:>11.1}x",
            p99 / reference
        );
    }
}
