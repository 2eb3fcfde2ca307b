use std::path::Path;

use xsell_core::aggregate::AggregateConfig;
use xsell_core::tally::Track;
use xsell_core::{Aggregates, OrderLog, Tally};
use xsell_data::generate::{GenerateConfig, generate};
use xsell_data::{ColumnMap, RawLine, write_lines};

use crate::{Cluster, Engine, EngineConfig, EngineError, parse_size};

/// A small engine. Its limit leaves the operators 64 MiB whatever the test process holds: the
/// process's resident memory (this binary's tests run side by side in it) is reserved in the pool
/// during each call, up to half the limit, and 32 MiB were once too few for a sort's merge.
fn small_engine_config(dir: &Path) -> EngineConfig {
    EngineConfig { memory_limit: 128 << 20, work_dir: Some(dir.to_path_buf()), partitions: 2, cluster: Cluster::Local }
}

/// `log` renumbered as the engine numbers it: items and customers in id order.
fn in_engine_order(log: &OrderLog) -> OrderLog {
    let mut items: Vec<usize> = (0..log.catalog.len()).collect();
    items.sort_by(|&a, &b| log.catalog.ids[a].cmp(&log.catalog.ids[b]));
    let mut item_ix = vec![0u32; items.len()];
    for (new, &old) in items.iter().enumerate() {
        item_ix[old] = new as u32;
    }
    let mut customers: Vec<usize> = (0..log.customers.len()).collect();
    customers.sort_by(|&a, &b| log.customers[a].cmp(&log.customers[b]));
    let mut cust_ix = vec![0u32; customers.len()];
    for (new, &old) in customers.iter().enumerate() {
        cust_ix[old] = new as u32;
    }
    let mut out = log.clone();
    let pick = |v: &Vec<_>| items.iter().map(|&i| v[i]).collect::<Vec<_>>();
    out.catalog.ids = items.iter().map(|&i| log.catalog.ids[i].clone()).collect();
    out.catalog.names = items.iter().map(|&i| log.catalog.names[i].clone()).collect();
    out.catalog.categories = items.iter().map(|&i| log.catalog.categories[i].clone()).collect();
    out.catalog.prices = pick(&log.catalog.prices);
    out.catalog.price_sums = items.iter().map(|&i| log.catalog.price_sums[i]).collect();
    out.customers = customers.iter().map(|&c| log.customers[c].clone()).collect();
    for o in &mut out.orders {
        o.customer = o.customer.map(|c| cust_ix[c as usize]);
        for i in &mut o.items {
            *i = item_ix[*i as usize];
        }
    }
    for r in &mut out.returns {
        r.customer = r.customer.map(|c| cust_ix[c as usize]);
        r.item = item_ix[r.item as usize];
    }
    out
}

fn assert_same(a: &Aggregates, b: &Aggregates) {
    assert_eq!(a.n_orders, b.n_orders);
    assert_eq!(a.n_recent, b.n_recent);
    assert_eq!(a.item_orders, b.item_orders, "item orders");
    assert_eq!(a.item_recent_orders, b.item_recent_orders, "recent item orders");
    assert_eq!(a.item_returns, b.item_returns, "item returns");
    assert_eq!(a.customer_orders, b.customer_orders, "customer orders");
    assert_eq!(a.customer_lines, b.customer_lines, "customer lines");
    assert_eq!(a.customer_returns, b.customer_returns, "customer returns");
    assert_eq!(a.pairs, b.pairs, "co-purchase pairs");
    assert_eq!(a.history, b.history, "history");
    assert_eq!(a.since, b.since, "orders since");
    assert_eq!(a.gram_items, b.gram_items, "Gram items");
    assert_eq!(a.gram, b.gram, "Gram");
    assert_eq!(a.gram_pairs, b.gram_pairs, "Gram pairs");
    assert_eq!(a.pair_gram, b.pair_gram, "pair Gram rows");
}

/// Tallies equal, price sums within rounding (the engine sums in another order) and the recent
/// orders' items as sets.
fn assert_same_tally(a: &Tally, b: &Tally) {
    let (ca, cb) = (&a.catalog, &b.catalog);
    // (names may differ: the engine keeps the smallest, the reader the first)
    assert_eq!((&ca.ids, &ca.categories), (&cb.ids, &cb.categories), "catalog");
    assert_eq!(ca.price_sums.len(), cb.price_sums.len(), "price sums");
    for (x, y) in ca.price_sums.iter().zip(&cb.price_sums) {
        assert!(x.1 == y.1 && (x.0 - y.0).abs() <= 1e-9 * x.0.abs().max(1.0), "price sums {x:?} and {y:?}");
    }
    assert_eq!(a.customers, b.customers, "customers");
    assert_eq!((a.n_orders, a.span, a.max_order_items), (b.n_orders, b.span, b.max_order_items), "orders and span");
    assert_eq!(a.item_orders, b.item_orders, "item orders");
    assert_eq!(a.item_paired_orders, b.item_paired_orders, "paired item orders");
    assert_eq!(a.item_returns, b.item_returns, "item returns");
    assert_eq!(a.customer_orders, b.customer_orders, "customer orders");
    assert_eq!(a.customer_lines, b.customer_lines, "customer lines");
    assert_eq!(a.customer_returns, b.customer_returns, "customer returns");
    assert_eq!(a.history, b.history, "history");
    assert_eq!(a.since, b.since, "orders since");
    assert_eq!(a.pairs, b.pairs, "uncut pairs");
    let sorted = |r: &[Vec<u32>]| -> Vec<Vec<u32>> {
        r.iter()
            .map(|o| {
                let mut o = o.clone();
                o.sort_unstable();
                o
            })
            .collect()
    };
    assert_eq!(sorted(&a.recent), sorted(&b.recent), "recent orders");
    assert_eq!(a.tracked, b.tracked, "tracked pairs");
    assert_eq!(a.tracked_items, b.tracked_items, "tracked pairs × items");
    assert_eq!(a.tracked_pairs, b.tracked_pairs, "tracked pairs × pairs");
}

/// A generated log written as two files of a hive-partitioned directory.
fn generated_dir(dir: &Path) -> Vec<RawLine> {
    let (lines, _) = generate(&GenerateConfig { orders: 3_000, customers: 300, ..Default::default() });
    let (a, b): (Vec<RawLine>, Vec<RawLine>) = lines.iter().cloned().partition(|l| l.order_id.len() % 2 == 0);
    for (part, ls) in [("part=a", a), ("part=b", b)] {
        std::fs::create_dir_all(dir.join(part)).unwrap();
        write_lines(&dir.join(part).join("lines.parquet"), &ls).unwrap();
    }
    lines
}

#[test]
fn the_engine_counts_what_the_in_memory_pass_counts() {
    counts_what_the_in_memory_pass_counts(Cluster::Local);
}

/// The same plans on Ballista, a scheduler and an executor in this process.
#[cfg(feature = "ballista")]
#[test]
fn ballista_standalone_counts_what_the_in_memory_pass_counts() {
    counts_what_the_in_memory_pass_counts(Cluster::BallistaStandalone);
}

/// The plans on a Ballista scheduler reached by its address, as `--engine ballista://HOST:PORT`
/// reaches one: a scheduler and an executor started apart from the engine's session (on their own
/// runtime, over loopback gRPC).
#[cfg(feature = "ballista")]
#[test]
fn a_ballista_scheduler_reached_by_address_counts_what_the_in_memory_pass_counts() {
    use ballista_core::serde::BallistaCodec;
    use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
    let cluster = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let port = cluster.block_on(async {
        let addr = ballista_scheduler::standalone::new_standalone_scheduler().await.unwrap();
        let url = format!("http://localhost:{}", addr.port());
        let mut scheduler = None;
        for _ in 0..100 {
            match SchedulerGrpcClient::connect(url.clone()).await {
                Ok(s) => {
                    scheduler = Some(s);
                    break;
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        }
        let scheduler = scheduler.expect("the scheduler answers within 10 s");
        ballista_executor::new_standalone_executor(scheduler, 2, BallistaCodec::default()).await.unwrap();
        addr.port()
    });
    counts_what_the_in_memory_pass_counts(Cluster::Ballista(format!("df://localhost:{port}")));
    drop(cluster);
}

#[cfg(not(feature = "ballista"))]
#[test]
fn ballista_without_the_feature_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("log");
    generated_dir(&input);
    let cfg = EngineConfig { cluster: Cluster::BallistaStandalone, ..small_engine_config(tmp.path()) };
    let err = Engine::open(&input.to_string_lossy(), &ColumnMap::default(), &cfg).unwrap_err();
    assert!(err.to_string().contains("--features ballista"), "{err}");
}

fn counts_what_the_in_memory_pass_counts(cluster: Cluster) {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("log");
    generated_dir(&input);
    let spec = input.to_string_lossy().into_owned();
    let log = in_engine_order(&xsell_data::read_log(&spec).unwrap());
    let engine = Engine::open(&spec, &ColumnMap::default(), &EngineConfig { cluster, ..small_engine_config(tmp.path()) }).unwrap();
    assert_eq!(engine.catalog.ids, log.catalog.ids);
    assert_eq!(engine.catalog.categories, log.catalog.categories);
    assert_eq!(engine.customers, log.customers);
    assert_eq!(engine.n_orders(), log.orders.len());
    assert_eq!(engine.counts.lines, log.lines_read);
    assert!(!log.returns.is_empty(), "the generated log has returns");

    let chrono = xsell_core::protocol::chronological(&log);
    // few neighbours (ties at the cut), a small order cap (some orders leave the pair counts)
    let cfg = AggregateConfig { max_neighbours: 4, gram_items: 25, gram_pairs: 12, recent_fraction: 0.2, max_order_items: 3 };
    for (n, cutoff) in [(chrono.len(), None), (chrono.len() * 7 / 10, log.orders[chrono[chrono.len() * 7 / 10]].ts)] {
        let mem = Aggregates::compute(&log, &chrono[..n], cutoff, &cfg);
        let eng = engine.aggregates(n, cutoff, &cfg).unwrap();
        assert!(mem.gram_pairs.len() >= 6 && mem.pairs.indices.len() > 100, "the comparison covers pairs");
        assert_same(&mem, &eng);
    }

    // the additive counts a bundle keeps: the in-memory tally's, and the same aggregates
    let mem = Tally::compute(&log, &chrono, &cfg, None, Track::Strongest);
    let eng = engine.tally(&cfg).unwrap();
    assert!(mem.tracked.len() >= 6 && mem.pairs.indices.len() > 100, "the comparison covers tracked pairs");
    assert_same_tally(&mem, &eng);
    assert_same(&mem.aggregates(&cfg), &eng.aggregates(&cfg));
    assert_same(&eng.aggregates(&cfg), &engine.aggregates(chrono.len(), None, &cfg).unwrap());

    // the newest orders, in time order
    let (newest, first) = engine.newest_orders(chrono.len() - 50, 20).unwrap();
    assert_eq!(first, chrono.len() - 20);
    assert_eq!(newest.orders.len(), 20);
    for (k, o) in newest.orders.iter().enumerate() {
        let want = &log.orders[chrono[first + k]];
        let mut items = want.items.clone();
        items.sort_unstable();
        assert_eq!((&o.id, o.customer, o.ts, &o.items), (&want.id, want.customer, want.ts, &items));
    }
    assert_eq!(engine.order_ts(first).unwrap(), log.orders[chrono[first]].ts);
}

/// DataFusion decodes a file's embedded arrow schema, and arrow-ipc panics on some damaged ones:
/// such a file is refused by name instead.
#[test]
fn a_file_with_a_damaged_embedded_arrow_schema_is_named() {
    use datafusion::parquet::file::reader::{FileReader, SerializedFileReader};
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("log.parquet");
    let (lines, _) = generate(&GenerateConfig { orders: 50, customers: 10, ..Default::default() });
    write_lines(&path, &lines).unwrap();
    let good = std::fs::read(&path).unwrap();
    let probe = tmp.path().join("probe.parquet");
    let embedded = |bytes: &[u8]| {
        std::fs::write(&probe, bytes).unwrap();
        let reader = SerializedFileReader::new(std::fs::File::open(&probe).unwrap()).ok()?;
        let footer = reader.metadata().file_metadata().clone();
        footer
            .key_value_metadata()
            .and_then(|kv| kv.iter().find(|e| e.key == "ARROW:schema"))
            .and_then(|e| e.value.clone())
            .map(|v| (v, footer))
    };
    let (value, _) = embedded(&good).expect("the writer embeds the arrow schema");
    std::fs::remove_file(&probe).unwrap();
    let at = good.windows(value.len()).position(|w| w == value.as_bytes()).unwrap();
    // the first one-character change of the base64 text whose decoding panics
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let damaged = (0..value.len()).flat_map(|k| b"AQgw/".iter().map(move |&c| (k, c))).find_map(|(k, c)| {
        let mut bytes = good.clone();
        bytes[at + k] = c;
        let (v, footer) = embedded(&bytes)?;
        let kv = vec![datafusion::parquet::file::metadata::KeyValue::new("ARROW:schema".into(), v)];
        let decode = std::panic::catch_unwind(|| datafusion::parquet::arrow::parquet_to_arrow_schema(footer.schema_descr(), Some(&kv)));
        decode.is_err().then_some(bytes)
    });
    std::panic::set_hook(hook);
    std::fs::write(&path, damaged.expect("a damaged schema that panics arrow-ipc")).unwrap();
    let err = Engine::open(&path.to_string_lossy(), &ColumnMap::default(), &small_engine_config(tmp.path())).unwrap_err();
    let said = err.to_string();
    assert!(said.contains("log.parquet") && said.contains("ARROW:schema"), "{said}");
}

#[test]
fn a_file_with_an_unreadable_column_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("log");
    generated_dir(&input);
    // a third file whose quantity is text
    use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
    let bad = input.join("part=c").join("bad.parquet");
    std::fs::create_dir_all(bad.parent().unwrap()).unwrap();
    let col = |v: &str| std::sync::Arc::new(StringArray::from(vec![v])) as ArrayRef;
    let batch = RecordBatch::try_from_iter([("order_id", col("x")), ("item_id", col("y")), ("quantity", col("two"))]).unwrap();
    let mut w = datafusion::parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&bad).unwrap(), batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let err = Engine::open(&input.to_string_lossy(), &ColumnMap::default(), &small_engine_config(tmp.path())).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("bad.parquet") && msg.contains("'quantity'") && msg.contains("Utf8"), "{msg}");
}

#[test]
fn settings_are_checked_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("log");
    generated_dir(&input);
    let cfg = EngineConfig { memory_limit: 1 << 20, ..small_engine_config(tmp.path()) };
    let err = Engine::open(&input.to_string_lossy(), &ColumnMap::default(), &cfg).unwrap_err();
    assert!(matches!(err, EngineError::BadSetting { setting: "memory limit (--memory-limit)", .. }), "{err}");
    assert_eq!(parse_size("1GB"), Ok(1 << 30));
    assert_eq!(parse_size("512MiB"), Ok(512 << 20));
    assert_eq!(parse_size("1.5k"), Ok(1536));
    assert!(parse_size("ten").unwrap_err().contains("not a size"));
    assert!(parse_size("3 parsecs").unwrap_err().contains("unknown unit"));
}

#[test]
fn a_log_without_returns_or_pairs_is_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("single.parquet");
    let line = |o: &str, c: Option<&str>, i: &str, ts: i64| RawLine {
        order_id: o.into(),
        customer_id: c.map(Into::into),
        item_id: i.into(),
        quantity: 1,
        ts: Some(ts),
        ..Default::default()
    };
    write_lines(&path, &[line("2", Some("b"), "x", 20), line("1", Some("a"), "y", 10), line("10", None, "x", 20)]).unwrap();
    let engine = Engine::open(&path.to_string_lossy(), &ColumnMap::default(), &small_engine_config(tmp.path())).unwrap();
    assert_eq!((engine.n_orders(), engine.counts.returns, engine.catalog.len()), (3, 0, 2));
    let cfg = AggregateConfig { gram_items: 10, gram_pairs: 4, ..Default::default() };
    let agg = engine.aggregates(3, None, &cfg).unwrap();
    let log = in_engine_order(&xsell_data::read_log(&path.to_string_lossy()).unwrap());
    assert_same(&Aggregates::compute(&log, &xsell_core::protocol::chronological(&log), None, &cfg), &agg);
    // ids order as integers: "10" after "2" at the same time
    let (newest, _) = engine.newest_orders(0, 10).unwrap();
    assert_eq!(newest.orders.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(), ["1", "2", "10"]);
}

/// During a call, the process's resident memory is reserved in the engine's pool (at most half
/// the limit) and released afterwards, so the limit bounds the process and not only the operators.
#[cfg(target_os = "linux")]
#[test]
fn the_process_memory_counts_against_the_limit_during_a_call() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("log");
    generated_dir(&input);
    for limit in [64u64 << 20, 128 << 20, 8 << 30] {
        let cfg = EngineConfig { memory_limit: limit, ..small_engine_config(tmp.path()) };
        let engine = Engine::open(&input.to_string_lossy(), &ColumnMap::default(), &cfg).unwrap();
        let pool = engine.ctx.runtime_env().memory_pool.clone();
        assert_eq!(pool.reserved(), 0, "nothing is reserved between calls");
        let resident = || (xsell_data::resident_mib().unwrap() * 1048576.0) as usize;
        let before = resident();
        let held = engine.hold_resident_memory().expect("a local engine reserves");
        let after = resident();
        assert_eq!(pool.reserved(), held.size());
        // (other tests of this process allocate meanwhile: the reading is bracketed, with slack)
        let (lo, hi) = (before.min(after).saturating_sub(64 << 20), before.max(after) + (64 << 20));
        let half = (limit / 2) as usize;
        if limit == 64 << 20 {
            assert_eq!(held.size(), half, "half the limit, as this process holds more");
        } else {
            assert!((lo.min(half)..=hi.min(half)).contains(&held.size()), "held {} at {before}..{after} resident", held.size());
        }
        drop(held);
        assert_eq!(pool.reserved(), 0);
        // and the passes still run within the limit that is left (64 MiB or more: 32 MiB can be
        // too few for a sort's merge)
        if limit > 64 << 20 {
            engine.aggregates(engine.n_orders(), None, &AggregateConfig::default()).unwrap();
        }
    }
}
