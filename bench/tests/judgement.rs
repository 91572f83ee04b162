//! Smoke run of the judgement scenario (`cutover-bench judgement` as a library call): one
//! detection run per rule at `for = 1s` and a 15-second A/A run, all lanes at once. Checks that
//! each injected fault rolls `new` back (by some rule), that the A/A lane sent traffic and read
//! evaluations with data, that each fault injected into the A/A lane afterwards rolls back too
//! (RELIABILITY 65), and that the report has its tables; not how fast anything is, nor whether
//! the A/A run stayed free of rollbacks (too short to say).

use std::time::Duration;

use cutover_bench::judgement::{self, JudgementOptions, Rule};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn judgement_smoke() {
    let opts = JudgementOptions {
        runs: 1,
        hold: Duration::from_secs(1),
        window: Duration::from_secs(5),
        aa: Duration::from_secs(15),
        // Four lanes of a debug-built proxy share two cores: fewer clients keep the machine
        // from saturating, and new's answers ten times slower stand out of the proxies' own
        // latency, which lands on both sides (the release build detects × 3, `make bench`).
        connections: 2,
        latency_factor: 10,
    };
    let report = judgement::run(&opts, |line| println!("{line}")).await;
    let markdown = report.to_markdown();
    println!("{markdown}");

    assert_eq!(report.detection.len(), Rule::ALL.len());
    for rule in Rule::ALL {
        let d = report.detection(rule).expect("a lane per rule");
        assert_eq!(d.runs(), 1, "{}: one run", rule.name());
        assert_eq!(
            d.missed,
            0,
            "{}: the fault ({}) was not detected within {:?}; rollbacks before it: {:?}",
            rule.name(),
            rule.fault(&opts),
            opts.bound(),
            d.before_fault
        );
        assert_eq!(d.unarmed, 0, "{}: armed: {:?}", rule.name(), d.before_fault);
        assert_eq!(d.times.len(), 1, "{}: one time measured", rule.name());
        assert_eq!(
            d.fired.values().sum::<usize>(),
            1,
            "{}: the rollback names the rule that fired: {:?}",
            rule.name(),
            d.fired
        );
        assert!(
            d.fired
                .keys()
                .all(|r| Rule::ALL.iter().any(|k| k.name() == r)),
            "{}: a known rule fired: {:?}",
            rule.name(),
            d.fired
        );
        assert!(
            d.times[0] < opts.bound(),
            "{}: {:?} within the bound",
            rule.name(),
            d.times[0]
        );
    }

    let aa = report.aa.as_ref().expect("the A/A lane ran");
    assert!(aa.elapsed >= opts.aa, "ran {:?}", aa.elapsed);
    assert!(
        aa.requests > 100,
        "the A/A load made requests: {}",
        aa.requests
    );
    assert!(
        aa.new_requests > 0 && aa.new_requests < aa.requests,
        "both backends served: new {} of {}",
        aa.new_requests,
        aa.requests
    );
    // 15 s at one poll per 500 ms, minus start-up.
    assert!(aa.polls >= 20, "polled the verdicts: {}", aa.polls);
    assert!(aa.evaluated > 0, "the controller evaluated the route");
    for rule in Rule::ALL {
        let c = aa
            .outcomes
            .get(rule.name())
            .unwrap_or_else(|| panic!("{} was evaluated: {:?}", rule.name(), aa.outcomes));
        assert!(
            c.total() > c.no_data,
            "{} had data in some evaluation: {c:?}",
            rule.name()
        );
    }
    assert!(aa.polls_with_data() > 0);
    for r in &aa.rollbacks {
        // Counted and reported, not failed: 15 s says nothing about false rollbacks.
        println!("A/A rollback at {:?}: {} ({})", r.at, r.rule, r.reason);
    }
    // RELIABILITY 65: after the noise, each kind of regression in the same lane rolls back.
    let after: Vec<Rule> = aa.after.iter().map(|d| d.rule).collect();
    assert_eq!(
        after,
        Rule::ALL,
        "one regression of each kind after the A/A run"
    );
    for d in &aa.after {
        assert_eq!(
            (d.missed, d.unarmed, d.times.len()),
            (0, 0, 1),
            "{} after the A/A run: rolled back ({:?})",
            d.rule.name(),
            d.missed_verdicts
        );
    }

    for needle in [
        "| rule | fault | runs | missed | p50 | p99 | max |",
        "| error_rate |",
        "| latency_p99 |",
        "| divergence |",
        "| duration | requests |",
        "| rule | polls | fail | inconclusive |",
        "**After the A/A run** (RELIABILITY 65)",
        "Flagger",
    ] {
        assert!(markdown.contains(needle), "{needle:?} in:\n{markdown}");
    }
}

/// The scenario spreads each fault over one evaluation tick of the controller: its copy of the
/// tick must be the controller's.
#[test]
fn fault_phase_spans_the_controllers_tick() {
    assert_eq!(judgement::EVAL_TICK, cutover_control::controller::TICK);
}
