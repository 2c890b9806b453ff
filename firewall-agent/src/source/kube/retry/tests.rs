//! Tests of the retry schedule: backoff and jitter, what each failure was, and when a
//! run of failures is over.

use super::*;

fn status(code: u16, reason: &str, message: &str) -> Box<kube::core::Status> {
    Box::new(kube::core::Status {
        code,
        reason: reason.into(),
        message: message.into(),
        ..kube::core::Status::default()
    })
}

fn forbidden() -> watcher::Error {
    watcher::Error::InitialListFailed(kube::Error::Api(status(
        403,
        "Forbidden",
        "zones.zonewall.dev is forbidden: User \"agent\" cannot list resource \"zones\"",
    )))
}

fn retry_delay(next: Next) -> Duration {
    match next {
        Next::Retry { delay, .. } => delay,
        Next::Relist { .. } => panic!("a failure, not a routine relist"),
    }
}

#[test]
fn backoff_grows_with_jitter_to_the_cap_and_resets() {
    let mut backoff = RetryBackoff::new(42);
    let delays: Vec<Duration> = (0..12).map(|_| backoff.next_delay()).collect();
    for (attempt, delay) in delays.iter().enumerate() {
        let step = BACKOFF_FIRST
            .saturating_mul(1 << attempt.min(20))
            .min(BACKOFF_MAX);
        assert!(
            *delay >= step / 2 && *delay <= step,
            "attempt {attempt}: {delay:?} not within half and all of {step:?}"
        );
    }
    assert!(delays[11] >= BACKOFF_MAX / 2);
    assert!(BACKOFF_MAX >= Duration::from_secs(30));
    backoff.reset();
    assert!(backoff.next_delay() <= BACKOFF_FIRST);
}

#[test]
fn agents_spread_their_retries() {
    let first: Vec<Duration> = (1..=20)
        .map(|seed| RetryBackoff::new(seed * 7919).next_delay())
        .collect();
    let distinct: std::collections::BTreeSet<Duration> = first.iter().copied().collect();
    assert!(distinct.len() > 10, "{first:?}");
}

#[test]
fn failing_lists_back_off_across_init_events() {
    // What the watcher sends while its list keeps failing: Init, an error, Init...
    let mut retry = Retry::new(7);
    let mut waited = Duration::ZERO;
    let mut attempts = 0;
    while waited < Duration::from_secs(120) {
        assert!(!retry.event(&Event::<()>::Init));
        let next = retry.error(&forbidden());
        let Next::Retry {
            failure,
            delay,
            attempts: counted,
        } = next
        else {
            panic!("a failure")
        };
        attempts += 1;
        assert_eq!(counted, attempts);
        assert_eq!(failure.request, Request::List);
        assert_eq!(failure.reason, "forbidden");
        assert!(
            failure
                .cause
                .starts_with("403 Forbidden: zones.zonewall.dev is forbidden"),
            "{}",
            failure.cause
        );
        waited += delay;
    }
    // 250 ms doubling to 30 s: within two minutes a dozen attempts, not hundreds.
    assert!(attempts <= 14, "{attempts} list attempts in {waited:?}");
    let last = retry_delay(retry.error(&forbidden()));
    assert!(last >= BACKOFF_MAX / 2, "{last:?}");

    // A list that completes ends the run and starts the schedule over.
    assert!(!retry.event(&Event::<()>::Init));
    assert!(!retry.event(&Event::InitApply(())));
    assert!(retry.event(&Event::<()>::InitDone));
    assert!(retry_delay(retry.error(&forbidden())) <= BACKOFF_FIRST);
}

#[test]
fn watch_failures_end_with_an_event_or_a_quiet_retry() {
    let mut retry = Retry::new(3);
    retry.event(&Event::<()>::Init);
    retry.event(&Event::<()>::InitDone);
    let broken =
        watcher::Error::WatchFailed(kube::Error::Api(status(503, "ServiceUnavailable", "")));
    let Next::Retry { failure, .. } = retry.error(&broken) else {
        panic!("a failure")
    };
    assert_eq!(failure.request, Request::Watch);
    assert_eq!(failure.reason, "server_error");
    assert_eq!(failure.cause, "503 Service Unavailable");
    // The second failure in a row waits longer: nothing reset the schedule between.
    let second = retry_delay(retry.error(&broken));
    assert!(second >= BACKOFF_FIRST, "{second:?}");
    assert!(retry.awaiting_watch());
    assert!(retry.watch_settled());
    assert!(!retry.awaiting_watch());
    assert!(!retry.watch_settled(), "nothing left to settle");

    retry.error(&broken);
    assert!(retry.event(&Event::Apply(())), "an event ends the run");
    assert!(!retry.event(&Event::Apply(())));
}

#[test]
fn an_expired_watch_is_a_routine_relist() {
    let mut retry = Retry::new(5);
    retry.event(&Event::<()>::Init);
    retry.event(&Event::<()>::InitDone);
    let gone =
        watcher::Error::WatchError(status(410, "Expired", "too old resource version: 1 (2)"));
    let Next::Relist { delay } = retry.error(&gone) else {
        panic!("a 410 is routine")
    };
    assert!(delay <= BACKOFF_FIRST);
    assert!(!retry.awaiting_watch());
    // What fails next is the relist.
    let Next::Retry { failure, .. } = retry.error(&watcher::Error::NoResourceVersion) else {
        panic!("a failure")
    };
    assert_eq!(failure.request, Request::List);
    assert_eq!(failure.reason, "no_resource_version");
}

#[test]
fn a_refused_streamed_list_is_told_from_other_failures() {
    let refused = |code| {
        watcher::Error::WatchStartFailed(kube::Error::Api(status(
            code,
            "Invalid",
            "sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled",
        )))
    };
    assert!(streaming_refused(&refused(422)));
    assert!(streaming_refused(&refused(400)));
    assert!(!streaming_refused(&refused(403)));
    assert!(!streaming_refused(&forbidden()));
}

#[test]
fn statuses_read_as_code_phrase_and_message() {
    assert_eq!(
        status_text(&status(429, "TooManyRequests", "slow down")),
        "429 Too Many Requests: slow down"
    );
    assert_eq!(status_text(&status(418, "Teapot", "")), "418 Teapot");
    assert_eq!(reason_of(404), "not_found");
    assert_eq!(reason_of(422), "client_error");
    assert_eq!(reason_of(0), "api_error");
}
