//! The `xsell` binary as a user runs it: exit codes and messages.

use std::process::{Command, Stdio};

fn xsell() -> Command {
    Command::new(env!("CARGO_BIN_EXE_xsell"))
}

/// Runs `xsell args` in `dir`, expecting success; returns its stdout.
fn ok_in(dir: &std::path::Path, args: &[&str]) -> String {
    let out = xsell().args(args).current_dir(dir).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Hyperparameters small enough for a test to train in seconds.
const SMALL_HP: &str = r#"{"dim": 8, "max_steps": 100, "ranker_epochs": 5, "ranker_hidden": 0}"#;

#[test]
fn a_closed_stdout_ends_the_command_quietly() {
    let mut child = xsell().args(["serve", "--print-config"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    drop(child.stdout.take()); // the reader goes away, as `| head` does
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}

#[test]
fn bad_settings_are_one_line_errors_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let hp = dir.path().join("hp.json");
    std::fs::write(&hp, r#"{"bogus_key": 1}"#).unwrap();
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"a file").unwrap();
    for (args, want) in [
        (vec!["train", "--config", hp.to_str().unwrap()], "bogus_key"),
        (vec!["train", "--models", blocker.to_str().unwrap()], "cannot be written"),
        (vec!["train", "--column", "customer_id=order_id"], "customer_id"),
        (vec!["serve", "--max-in-flight", "0"], "max_in_flight"),
        (vec!["train", "--engine", "datafusion", "--memory-limit", "1MB"], "--memory-limit"),
    ] {
        let out = xsell().args(&args).current_dir(dir.path()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        let last = stderr.lines().last().unwrap_or_default();
        assert!(last.starts_with("error: ") && last.contains(want), "{args:?}: {stderr}");
    }
}

/// `xsell batch`: every customer of the model scored from their history and last order, in
/// parquet, under the touchpoint's policy; `--orders` skips customers not due yet.
#[test]
fn batch_writes_a_campaign_for_every_customer() {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| ok_in(dir.path(), args);
    run(&["generate", "--out", "o.parquet", "--orders", "800", "--customers", "40"]);
    std::fs::write(dir.path().join("hp.json"), SMALL_HP).unwrap();
    run(&["train", "--orders", "o.parquet", "--config", "hp.json", "--name", "m"]);
    let said = run(&["batch", "--name", "m", "--out", "c.parquet", "--touchpoint", "email", "--batch-customers", "7", "--explain"]);
    assert!(said.contains("customers ranked"), "{said}");
    let f = std::fs::File::open(dir.path().join("c.parquet")).unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(f).unwrap().build().unwrap();
    let (mut rows, mut explained, mut customers) = (0, 0, std::collections::HashMap::<String, u32>::new());
    for b in reader {
        let b = b.unwrap();
        let c = b.column_by_name("customer_id").unwrap().as_any().downcast_ref::<arrow_array::StringArray>().unwrap().clone();
        let p = b.column_by_name("probability").unwrap().as_any().downcast_ref::<arrow_array::Float32Array>().unwrap().clone();
        let d = b.column_by_name("drivers").unwrap().as_any().downcast_ref::<arrow_array::StringArray>().unwrap().clone();
        for r in 0..b.num_rows() {
            assert!((0.0..=1.0).contains(&p.value(r)));
            explained += usize::from(!d.value(r).is_empty());
            *customers.entry(c.value(r).to_owned()).or_default() += 1;
        }
        rows += b.num_rows();
    }
    assert!(customers.len() >= 30, "{} customers in the campaign", customers.len());
    // the e-mail policy's offer budget is 8
    assert!(customers.values().all(|&n| n <= 8) && rows > 0);
    assert!(explained * 2 > rows, "{explained} of {rows} offers have drivers");
    // bundles: at most 3 items a customer, each row carrying its bundle's probability
    run(&["batch", "--name", "m", "--out", "b.parquet", "--bundle", "3", "--discount", "0.1"]);
    let f = std::fs::File::open(dir.path().join("b.parquet")).unwrap();
    let mut per: std::collections::HashMap<String, (u32, f32)> = Default::default();
    for b in ParquetRecordBatchReaderBuilder::try_new(f).unwrap().build().unwrap() {
        let b = b.unwrap();
        let c = b.column_by_name("customer_id").unwrap().as_any().downcast_ref::<arrow_array::StringArray>().unwrap().clone();
        let bp = b.column_by_name("bundle_probability").unwrap().as_any().downcast_ref::<arrow_array::Float32Array>().unwrap().clone();
        for r in 0..b.num_rows() {
            let e = per.entry(c.value(r).to_owned()).or_insert((0, bp.value(r)));
            e.0 += 1;
            assert_eq!(e.1, bp.value(r), "one probability per bundle");
            assert!(bp.value(r) > 0.0 && bp.value(r) <= 1.0);
        }
    }
    assert!(per.len() >= 30 && per.values().all(|(n, _)| *n <= 3), "{per:?}");
    let said = run(&["batch", "--name", "m", "--out", "d.parquet", "--orders", "o.parquet"]);
    assert!(said.contains("not due yet"), "{said}");
    let out = xsell().args(["batch", "--name", "m", "--touchpoint", "shelf"]).current_dir(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown touchpoint"));
}

/// `xsell train --engine datafusion`: the aggregate pass out of core, the bundle as usable as the
/// in-process one's (same catalog, a ranker kept by validation, loads and ranks).
#[test]
fn training_on_the_engine_writes_a_working_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| ok_in(dir.path(), args);
    run(&["generate", "--out", "o.parquet", "--orders", "1500", "--customers", "60"]);
    std::fs::write(dir.path().join("hp.json"), SMALL_HP).unwrap();
    let said = run(&[
        "train",
        "--orders",
        "o.parquet",
        "--config",
        "hp.json",
        "--name",
        "df",
        "--engine",
        "datafusion",
        "--memory-limit",
        "128MB",
        "--work-dir",
        "work",
    ]);
    assert!(said.contains("validation on") && said.contains("model bundle:"), "{said}");
    run(&["train", "--orders", "o.parquet", "--config", "hp.json", "--name", "mem"]);
    let df = xsell_model::load_latest(&dir.path().join("models/df")).unwrap();
    let mem = xsell_model::load_latest(&dir.path().join("models/mem")).unwrap();
    let sorted = |ids: &[String]| {
        let mut v = ids.to_vec();
        v.sort();
        v
    };
    assert_eq!(sorted(&df.model.parts().items.ids), sorted(&mem.model.parts().items.ids));
    assert_eq!(df.model.parts().customers.ids.len(), mem.model.parts().customers.ids.len());
    let basket = vec![df.model.parts().items.ids[0].clone()];
    let ranked = df.model.rank(&xsell_core::RankQuery { basket, k: 5, ..Default::default() }).unwrap();
    assert_eq!(ranked.items.len(), 5);
    // the work directory is cleaned up
    assert_eq!(std::fs::read_dir(dir.path().join("work")).unwrap().count(), 0);

    // the same training with the plans on Ballista standalone (a scheduler and an executor in
    // the process) counts the same: the same catalog and customers
    #[cfg(feature = "ballista")]
    {
        run(&[
            "train",
            "--orders",
            "o.parquet",
            "--config",
            "hp.json",
            "--name",
            "bal",
            "--engine",
            "ballista:standalone",
            "--work-dir",
            "work",
        ]);
        let bal = xsell_model::load_latest(&dir.path().join("models/bal")).unwrap();
        assert_eq!(bal.model.parts().items, df.model.parts().items);
        assert_eq!(bal.model.parts().customers, df.model.parts().customers);
        assert_eq!(bal.model.parts().history, df.model.parts().history);
    }
}

/// `xsell train --update`: the newer orders of a log folded into a bundle's stored counts; older
/// orders, a bundle without counts and flags that would change the bundle's settings are refused.
#[test]
fn an_update_folds_newer_orders_into_the_latest_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let (lines, _) =
        xsell_data::generate::generate(&xsell_data::generate::GenerateConfig { orders: 1_500, customers: 300, ..Default::default() });
    let mut times: Vec<i64> = lines.iter().filter_map(|l| l.ts).collect();
    times.sort_unstable();
    let cut = times[times.len() * 9 / 10];
    let (old, new): (Vec<_>, Vec<_>) = lines.into_iter().partition(|l| l.ts.unwrap() < cut);
    xsell_data::write_lines(&dir.path().join("old.parquet"), &old).unwrap();
    xsell_data::write_lines(&dir.path().join("new.parquet"), &new).unwrap();
    std::fs::write(dir.path().join("hp.json"), SMALL_HP).unwrap();
    let run = |args: &[&str]| xsell().args(args).current_dir(dir.path()).output().unwrap();
    let ok = |args: &[&str]| ok_in(dir.path(), args);
    let refused = |args: &[&str], why: &str| {
        let out = run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(why), "{args:?} should fail with {why:?}: {err}");
    };
    ok(&["train", "--orders", "old.parquet", "--config", "hp.json", "--name", "m"]);
    let models = dir.path().join("models/m");
    let first = xsell_model::latest_version(&models).unwrap();
    assert!(models.join(&first).join("aggregates/pairs.parquet").exists(), "the bundle keeps its counts");
    let before = xsell_model::load_latest(&models).unwrap().manifest.n_orders;

    // a warm update of a copy: its embeddings continue from the bundle's
    ok(&["train", "--orders", "old.parquet", "--config", "hp.json", "--name", "w"]);
    let said = ok(&["train", "--update", "--orders", "new.parquet", "--name", "w"]);
    assert!(said.contains("updated") && said.contains("embeddings continued for 10 %"), "{said}");
    let warmed = xsell_model::load_latest(&dir.path().join("models/w")).unwrap();
    assert_eq!(warmed.manifest.metrics["updated_from"]["warm"], 0.1);

    let said = ok(&["train", "--update", "--exact", "--orders", "new.parquet", "--name", "m"]);
    assert!(said.contains(&format!("updated {first}")) && said.contains("--exact"), "{said}");
    let updated = xsell_model::load_latest(&models).unwrap();
    assert_ne!(updated.manifest.version, first);
    let new_orders = xsell_data::read_log(&dir.path().join("new.parquet").to_string_lossy()).unwrap().orders.len();
    assert_eq!(updated.manifest.n_orders, before + new_orders as f32);
    assert_eq!(updated.manifest.metrics["updated_from"]["version"], first.as_str());
    let ranked =
        updated.model.rank(&xsell_core::RankQuery { basket: vec![updated.model.parts().items.ids[0].clone()], k: 5, ..Default::default() });
    assert_eq!(ranked.unwrap().items.len(), 5);
    assert_eq!(warmed.model.parts().items.ids, updated.model.parts().items.ids);
    assert_ne!(warmed.model.parts().emb_in, updated.model.parts().emb_in);

    // a bundle trained on the engine keeps its counts too, and takes the same update
    ok(&["train", "--orders", "old.parquet", "--config", "hp.json", "--name", "e", "--engine", "datafusion", "--memory-limit", "128MB"]);
    let said = ok(&["train", "--update", "--orders", "new.parquet", "--name", "e"]);
    assert!(said.contains("updated"), "{said}");
    let engine_updated = xsell_model::load_latest(&dir.path().join("models/e")).unwrap();
    assert_eq!(engine_updated.manifest.n_orders, updated.manifest.n_orders);
    let sorted = |ids: &[String]| {
        let mut v = ids.to_vec();
        v.sort();
        v
    };
    assert_eq!(sorted(&engine_updated.model.parts().items.ids), sorted(&updated.model.parts().items.ids));
    assert_eq!(sorted(&engine_updated.model.parts().customers.ids), sorted(&updated.model.parts().customers.ids));

    // the same orders again are not newer; the bundle stays as it is
    refused(&["train", "--update", "--orders", "new.parquet", "--name", "m"], "not after the newest order");
    assert_eq!(xsell_model::latest_version(&models).unwrap(), updated.manifest.version);
    refused(&["train", "--update", "--orders", "new.parquet", "--name", "m", "--seed", "3"], "--seed");
    refused(&["train", "--update", "--orders", "new.parquet", "--name", "m", "--warm", "1.5"], "not a share");
    refused(&["train", "--update", "--orders", "new.parquet", "--name", "m", "--warm", "--exact"], "--exact");
    refused(&["train", "--orders", "new.parquet", "--name", "m", "--warm"], "--update");
    std::fs::remove_dir_all(models.join(&updated.manifest.version).join("aggregates")).unwrap();
    refused(&["train", "--update", "--orders", "new.parquet", "--name", "m"], "no stored counts");
}
