//! `atosnap demo`, the canonical drill on the fixtures, passes end to end.

#[test]
fn demo_runs_the_canonical_drill_and_every_step_passes() {
    let out = assert_cmd::Command::cargo_bin("atosnap")
        .unwrap()
        .arg("demo")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["ok"], true);
    let steps: Vec<&str> = doc["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        ["create", "mutate", "create", "list", "diff", "verify", "restore", "check", "drill"]
    );
    let check = &doc["steps"][7]["result"];
    assert_eq!(check["marker_gone_from_live_db"], true);
    assert_eq!(check["pre_restore_snapshot_holds_marker"], true);
    assert_eq!(check["chroma_block_restored"], true);
    assert!(stderr.contains("all steps passed"));
}
