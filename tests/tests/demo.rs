//! `cutover demo` (SPEC §1) runs to the end on its own: demo backends, the real proxy on the
//! embedded source, shadow until the shadow-phase gate marks the diverging new, the operator's
//! canary, the controller's own ramp 1 → 5 → 25, a fault in new, the automatic rollback, and a
//! clean drain.

use std::process::Command;
use std::time::{Duration, Instant};

use cutover_tests::cutover_bin;

#[test]
fn demo_shadows_ramps_rolls_back_and_drains() {
    let started = Instant::now();
    let out = Command::new(cutover_bin())
        .args(["demo", "--step", "1s", "--connections", "4"])
        .output()
        .expect("run cutover demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "demo took {:?}",
        started.elapsed()
    );

    // One table row per step: `new %`, `shadow %`, legacy/new share, …, errors, req/s.
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .filter(|l| l.contains('|') && !l.contains("new %"))
        .map(|l| l.split('|').map(str::trim).collect())
        .collect();
    assert_eq!(
        rows.len(),
        5,
        "shadow, three ramp steps, after the rollback:\n{stdout}"
    );
    let steps = [
        (0.0, 100.0),
        (1.0, 100.0),
        (5.0, 100.0),
        (25.0, 100.0),
        (0.0, 100.0),
    ];
    for (row, (want_new, want_shadow)) in rows.iter().zip(steps) {
        assert_eq!(
            row[0].parse::<f64>().unwrap(),
            want_new,
            "step order:\n{stdout}"
        );
        assert_eq!(
            row[1].parse::<f64>().unwrap(),
            want_shadow,
            "shadow share:\n{stdout}"
        );
        let shares: Vec<f64> = row[2]
            .split_whitespace()
            .map(|s| s.trim_end_matches('%').parse().unwrap())
            .collect();
        let tolerance = if want_new == 0.0 || want_new == 100.0 {
            0.0
        } else {
            15.0
        };
        assert!(
            (shares[1] - want_new).abs() <= tolerance,
            "new served {}% at weight {want_new}:\n{stdout}",
            shares[1]
        );
        assert_eq!(
            row[5], "0",
            "no failed requests at step {want_new}:\n{stdout}"
        );
    }

    // Shadow mode found new's one wrong field, on the one endpoint that has it.
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("shadow mode:"))
        .unwrap_or_else(|| panic!("no shadow summary:\n{stdout}"));
    let rate: f64 = summary
        .split('(')
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no divergence rate in {summary:?}"));
    assert!(
        (30.0..=70.0).contains(&rate),
        "about half diverge (orders, not users): {summary}"
    );
    assert!(
        stdout.contains("(endpoint GET /orders/{n}) differs at [\"/total\"]"),
        "sample diff:\n{stdout}"
    );
    // The shadow-phase gate marked new before the operator moved on, weights kept.
    let gate = stdout
        .lines()
        .find(|l| l.starts_with("SHADOW GATE after "))
        .unwrap_or_else(|| panic!("no shadow gate line:\n{stdout}"));
    assert!(
        gate.contains("rule divergence — shadow phase: divergence rate "),
        "{gate}"
    );
    assert!(
        stdout.contains("phase rolled_back, weights kept (new 0 live, shadow 100 %)"),
        "{stdout}"
    );
    // The fault fired the error_rate rule and the weights snapped back.
    let rollback = stdout
        .lines()
        .find(|l| l.starts_with("ROLLBACK after "))
        .unwrap_or_else(|| panic!("no rollback line:\n{stdout}"));
    assert!(
        rollback.contains("rule error_rate — new error rate "),
        "{rollback}"
    );
    assert!(
        stdout.contains("weights snapped to legacy 100 / new 0"),
        "{stdout}"
    );
    assert!(
        stdout.contains("drained and exited (exit status: 0)"),
        "clean drain:\n{stdout}"
    );
}

/// `cutover demo --keep-running` prints the dashboard's URL and keeps it worth opening: the
/// page answers, and the route's time series keeps getting requests from the demo's trickle of
/// load until Ctrl-C, which drains the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_keeps_the_dashboard_live() {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(cutover_bin())
        .args([
            "demo",
            "--step",
            "1s",
            "--connections",
            "4",
            "--keep-running",
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run cutover demo");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut seen = String::new();
    let url = tokio::time::timeout(Duration::from_secs(90), async {
        while let Some(line) = lines.next_line().await.expect("demo output") {
            seen.push_str(&line);
            seen.push('\n');
            if let Some(rest) = line.split("Open the dashboard: ").nth(1) {
                return rest.split_whitespace().next().map(str::to_string);
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .unwrap_or_else(|| panic!("no dashboard URL in the demo's output:\n{seen}"));
    let client = cutover_tests::Client::new();
    let page = client.get(&url).await.expect("the dashboard");
    assert_eq!(page.status, 200);
    assert!(page.text().contains("data-chart"), "the page");
    let series = format!("{url}api/v1/routes/orders/series");
    let last_second_requests = || {
        let (client, series) = (client.clone(), series.clone());
        async move {
            let v = client.get(&series).await.expect("series").json();
            let rps = |key: &str| {
                v["series"][key]
                    .as_array()
                    .and_then(|a| a.last())
                    .and_then(serde_json::Value::as_f64)
                    .unwrap_or(0.0)
            };
            rps("legacy.primary.rps") + rps("new.primary.rps")
        }
    };
    cutover_tests::eventually(
        Duration::from_secs(10),
        "the trickle shows in the series",
        || {
            let requests = last_second_requests();
            async move { requests.await > 0.0 }
        },
    )
    .await;
    let pid = child.id().expect("demo pid");
    assert!(Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .expect("kill -INT")
        .success());
    let rest = tokio::time::timeout(Duration::from_secs(30), async {
        let mut rest = String::new();
        while let Ok(Some(line)) = lines.next_line().await {
            rest.push_str(&line);
            rest.push('\n');
        }
        rest
    })
    .await
    .expect("the demo ends after Ctrl-C");
    assert!(rest.contains("drained and exited"), "{rest}");
    assert!(child.wait().await.expect("demo exit").success());
}
