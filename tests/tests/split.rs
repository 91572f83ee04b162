//! Traffic split by weights (SPEC §3 `weights`, `sticky`): the share `new` gets, the 100/0 and
//! 0/100 extremes, sticky stability per key (header and cookie), and monotone cohorts as the
//! `new` weight grows through config rewrites.

use std::collections::BTreeSet;

use cutover_tests::{map_concurrent, Backend, Client, Proxy, ProxyConfig, Route, RunningBackend};

struct Split {
    legacy: RunningBackend,
    new: RunningBackend,
    proxy: Proxy,
}

async fn split(route: impl FnOnce(Route) -> Route) -> Split {
    let legacy = Backend::new("legacy").run().await;
    let new = Backend::new("new").run().await;
    let route = route(
        Route::new("orders")
            .legacy_endpoints([legacy.addr()])
            .new_endpoints([new.addr()]),
    );
    let proxy = Proxy::start(ProxyConfig::new().route(route)).await;
    Split { legacy, new, proxy }
}

/// Sends `n` GETs (16 at a time); returns the serving backend of each, asserting all 200.
async fn backends_of(proxy: &Proxy, n: usize) -> Vec<String> {
    let client = proxy.client();
    let url = proxy.url("/split");
    map_concurrent((0..n).collect(), 16, move |_| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let res = client.get(&url).await.expect("request through the proxy");
            assert_eq!(res.status, 200, "{}", res.text());
            res.backend().expect("x-backend header")
        }
    })
    .await
}

/// How a sticky key is sent.
#[derive(Clone, Copy)]
enum Key {
    Header,
    Cookie,
}

/// For each user id, sends `repeats` requests carrying it and asserts they all landed on
/// the same backend; returns the set of ids served by `new`.
async fn cohort_on_new(
    proxy: &Proxy,
    ids: &[String],
    key: Key,
    repeats: usize,
) -> BTreeSet<String> {
    let client: Client = proxy.client();
    let url = proxy.url("/sticky");
    let results = map_concurrent(ids.to_vec(), 16, move |id| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let mut seen = Vec::new();
            for _ in 0..repeats {
                let header = match key {
                    Key::Header => ("x-user-id", id.clone()),
                    Key::Cookie => ("cookie", format!("theme=dark; uid={id}; lang=en")),
                };
                let res = client
                    .get_with_headers(&url, &[(header.0, header.1.as_str())])
                    .await
                    .expect("request through the proxy");
                assert_eq!(res.status, 200, "{}", res.text());
                seen.push(res.backend().expect("x-backend header"));
            }
            (id, seen)
        }
    })
    .await;
    let mut on_new = BTreeSet::new();
    for (id, seen) in results {
        assert!(
            seen.windows(2).all(|w| w[0] == w[1]),
            "sticky key {id} moved between backends at a fixed weight: {seen:?}"
        );
        if seen[0] == "new" {
            on_new.insert(id);
        }
    }
    on_new
}

fn user_ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("user-{i:04}")).collect()
}

fn percent(part: usize, whole: usize) -> f64 {
    100.0 * part as f64 / whole as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn weights_75_25_split_traffic() {
    let s = split(|r| r.weights(75, 25)).await;
    let n = 2000;
    let served = backends_of(&s.proxy, n).await;
    let on_new = served.iter().filter(|b| *b == "new").count();
    let on_legacy = served.iter().filter(|b| *b == "legacy").count();
    assert_eq!(on_new + on_legacy, n, "every answer came from a backend");
    // What the backends saw agrees with what the client saw.
    assert_eq!(s.new.count(), on_new);
    assert_eq!(s.legacy.count(), on_legacy);
    let share = percent(on_new, n);
    assert!(
        (share - 25.0).abs() <= 3.0,
        "new served {share:.1}% of {n} requests at weights 75/25"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn weights_100_0_sends_nothing_to_new() {
    let s = split(|r| r.weights(100, 0)).await;
    let served = backends_of(&s.proxy, 300).await;
    assert!(served.iter().all(|b| b == "legacy"), "{served:?}");
    assert_eq!(s.new.count(), 0);
    assert_eq!(s.legacy.count(), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn weights_0_100_sends_everything_to_new() {
    let s = split(|r| r.weights(0, 100)).await;
    let served = backends_of(&s.proxy, 300).await;
    assert!(served.iter().all(|b| b == "new"), "{served:?}");
    assert_eq!(s.legacy.count(), 0);
    assert_eq!(s.new.count(), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sticky_header_is_stable_at_fixed_weight() {
    let s = split(|r| r.weights(70, 30).sticky_header("x-user-id")).await;
    let ids = user_ids(200);
    let on_new = cohort_on_new(&s.proxy, &ids, Key::Header, 3).await;
    // Loose bound (±12 points ≈ 3.7σ for 200 keys): the cohort must follow the weight.
    let share = percent(on_new.len(), ids.len());
    assert!(
        (share - 30.0).abs() <= 12.0,
        "{share:.1}% of sticky keys on new at weight 30"
    );
    assert_eq!(s.legacy.count() + s.new.count(), ids.len() * 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sticky_header_cohorts_only_grow_as_new_weight_rises() {
    let mut s = split(|r| r.weights(90, 10).sticky_header("x-user-id")).await;
    let ids = user_ids(200);
    let mut previous = cohort_on_new(&s.proxy, &ids, Key::Header, 2).await;
    for new_weight in [30.0, 60.0, 90.0] {
        let next = s
            .proxy
            .config()
            .with_weights("orders", 100.0 - new_weight, new_weight);
        s.proxy.apply(&next);
        s.proxy
            .wait_for_weights("orders", 100.0 - new_weight, new_weight)
            .await;
        let current = cohort_on_new(&s.proxy, &ids, Key::Header, 2).await;
        let moved_back: Vec<&String> = previous.difference(&current).collect();
        assert!(
            moved_back.is_empty(),
            "raising new to {new_weight} moved keys from new back to legacy: {moved_back:?}"
        );
        assert!(
            current.len() > previous.len(),
            "cohort on new did not grow when new rose to {new_weight}: {} -> {}",
            previous.len(),
            current.len()
        );
        previous = current;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sticky_cookie_is_stable_and_monotone() {
    let mut s = split(|r| r.weights(80, 20).sticky_cookie("uid")).await;
    let ids = user_ids(100);
    let before = cohort_on_new(&s.proxy, &ids, Key::Cookie, 3).await;
    assert!(
        !before.is_empty() && before.len() < ids.len(),
        "at 20% some but not all cookie keys are on new ({} of {})",
        before.len(),
        ids.len()
    );
    let next = s.proxy.config().with_weights("orders", 40, 60);
    s.proxy.apply(&next);
    s.proxy.wait_for_weights("orders", 40.0, 60.0).await;
    let after = cohort_on_new(&s.proxy, &ids, Key::Cookie, 3).await;
    assert!(
        before.is_subset(&after),
        "keys moved from new back to legacy: {:?}",
        before.difference(&after).collect::<Vec<_>>()
    );
    assert!(after.len() > before.len(), "cohort grew from 20% to 60%");
}

/// The backend that served one GET carrying `headers`.
async fn served_by(proxy: &Proxy, headers: &[(&str, &str)]) -> String {
    let res = proxy
        .client()
        .get_with_headers(&proxy.url("/split"), headers)
        .await
        .expect("request through the proxy");
    assert_eq!(res.status, 200, "{}", res.text());
    res.backend().expect("x-backend header")
}

/// SPEC §8 pinning by header: `legacy` or `new` wins over the weights (a tester tries `new`
/// before it has live traffic), any other value is ignored, and sticky keys still apply to
/// unpinned requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pin_header_names_the_backend_whatever_the_weights() {
    let s = split(|r| {
        r.weights(100, 0)
            .sticky_header("x-user-id")
            .line(r#"pin = { header = "x-cutover-backend" }"#)
    })
    .await;
    let pin = |v: &'static str| [("x-cutover-backend", v), ("x-user-id", "u-1")];
    for _ in 0..5 {
        assert_eq!(served_by(&s.proxy, &pin("new")).await, "new");
        assert_eq!(served_by(&s.proxy, &pin("legacy")).await, "legacy");
        assert_eq!(
            served_by(&s.proxy, &pin("NEW")).await,
            "legacy",
            "only `new` pins"
        );
        assert_eq!(served_by(&s.proxy, &pin("both")).await, "legacy");
        assert_eq!(served_by(&s.proxy, &[("x-user-id", "u-1")]).await, "legacy");
    }
    assert_eq!(s.new.count(), 5, "only the pinned requests reached new");
    assert_eq!(s.legacy.count(), 20);
}

/// Pinning by cookie, against weights that send everything to `new`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pin_cookie_names_the_backend_whatever_the_weights() {
    let s = split(|r| {
        r.weights(0, 100)
            .line(r#"pin = { cookie = "cutover-backend" }"#)
    })
    .await;
    let cookie = |v: &'static str| [("cookie", v)];
    assert_eq!(
        served_by(&s.proxy, &cookie("a=1; cutover-backend=legacy")).await,
        "legacy"
    );
    assert_eq!(
        served_by(&s.proxy, &cookie("cutover-backend=new")).await,
        "new"
    );
    assert_eq!(
        served_by(&s.proxy, &cookie("cutover-backend=old")).await,
        "new"
    );
    assert_eq!(served_by(&s.proxy, &[]).await, "new");
    assert_eq!(s.legacy.count(), 1);
}
