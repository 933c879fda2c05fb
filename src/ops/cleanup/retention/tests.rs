//! Retention rules: each period rule, `within`, and the plan as a whole
//! (compiled only for tests: `#[cfg(test)] mod tests;` in mod.rs).

use super::*;
use chrono::{Duration, TimeZone};
use proptest::prelude::*;
use std::collections::BTreeSet;

fn noon(y: i32, m: u32, d: u32) -> Candidate {
    Candidate {
        stamp: Stamp::at(Utc.with_ymd_and_hms(y, m, d, 12, 0, 0).unwrap()),
        tags: Some(vec![]),
    }
}

fn days(y: i32, m: u32, from: u32, to: u32) -> Vec<Candidate> {
    (from..=to).map(|d| noon(y, m, d)).collect()
}

fn defaults() -> Policy {
    Policy::standard()
}

fn names(stamps: impl IntoIterator<Item = Stamp>) -> Vec<String> {
    stamps.into_iter().map(|s| s.to_string()).collect()
}

// ---- SPEC §3 reference cases, exact numbers ----------------------------

#[test]
fn spec_ten_days_keep_7_delete_3() {
    let c = days(2026, 4, 2, 11);
    let p = plan(&c, &[], &defaults());
    assert_eq!((p.keep.len(), p.delete.len()), (7, 3));
    assert_eq!(
        names(p.delete),
        ["20260402T120000Z", "20260403T120000Z", "20260404T120000Z"]
    );
}

#[test]
fn spec_seven_days_keep_7_delete_0() {
    let p = plan(&days(2026, 4, 5, 11), &[], &defaults());
    assert_eq!((p.keep.len(), p.delete.len()), (7, 0));
}

#[test]
fn spec_sundays_keep_9_delete_the_wednesday() {
    let mut c = days(2026, 4, 5, 11);
    c.extend([noon(2026, 3, 29), noon(2026, 3, 22), noon(2026, 3, 25)]);
    let p = plan(&c, &[], &defaults());
    assert_eq!((p.keep.len(), p.delete.len()), (9, 1));
    assert_eq!(names(p.delete), ["20260325T120000Z"]);
    let weekly: Vec<String> = p
        .keep
        .iter()
        .filter(|k| k.reasons.contains(&Reason::Weekly))
        .map(|k| k.stamp.to_string())
        .collect();
    assert_eq!(
        weekly,
        ["20260322T120000Z", "20260329T120000Z", "20260405T120000Z"]
    );
}

#[test]
fn spec_first_of_month_keep_9_delete_the_15th() {
    let mut c = days(2026, 4, 5, 11);
    c.extend([noon(2026, 1, 1), noon(2025, 12, 1), noon(2026, 1, 15)]);
    let p = plan(&c, &[], &defaults());
    assert_eq!((p.keep.len(), p.delete.len()), (9, 1));
    assert_eq!(names(p.delete), ["20260115T120000Z"]);
}

#[test]
fn spec_unparseable_is_reported_and_kept() {
    let p = plan(&days(2026, 4, 2, 11), &["not-a-stamp".into()], &defaults());
    assert_eq!(p.unparseable, ["not-a-stamp"]);
    assert_eq!(p.keep.len() + p.delete.len(), 10);
}

// ---- finer points -------------------------------------------------------

#[test]
fn the_most_recent_of_a_day_is_kept() {
    let day = Utc.with_ymd_and_hms(2026, 4, 11, 0, 0, 0).unwrap();
    let c: Vec<Candidate> = [1, 9, 23]
        .iter()
        .map(|h| Candidate {
            stamp: Stamp::at(day + Duration::hours(*h)),
            tags: Some(vec![]),
        })
        .chain([Candidate {
            stamp: Stamp::at(day + Duration::hours(23)).with_seq(2),
            tags: Some(vec![]),
        }])
        .collect();
    let p = plan(&c, &[], &defaults());
    assert_eq!(names(p.kept_stamps().cloned()), ["20260411T230000Z-2"]);
    assert_eq!(p.delete.len(), 3);
}

#[test]
fn tags_keep_and_unreadable_tags_keep() {
    let mut c = days(2026, 3, 2, 20);
    c[0].tags = Some(vec!["pre-restore".into(), "x".into()]);
    c[1].tags = None;
    let policy = Policy {
        keep_daily: 1,
        keep_tags: vec!["pre-restore".into()],
        ..Policy::default()
    };
    let p = plan(&c, &[], &policy);
    let kept: Vec<(String, Vec<String>)> = p
        .keep
        .iter()
        .map(|k| {
            (
                k.stamp.to_string(),
                k.reasons.iter().map(|r| r.to_string()).collect(),
            )
        })
        .collect();
    assert_eq!(
        kept,
        [
            (
                "20260302T120000Z".to_string(),
                vec!["tag:pre-restore".into()]
            ),
            (
                "20260303T120000Z".to_string(),
                vec!["tags_unreadable".into()]
            ),
            ("20260320T120000Z".to_string(), vec!["daily".into()]),
        ]
    );
}

#[test]
fn zero_counts_switch_rules_off_but_the_newest_stays() {
    let policy = Policy::default();
    assert!(policy.keeps_nothing());
    let p = plan(&days(2026, 4, 1, 5), &[], &policy);
    assert_eq!((p.keep.len(), p.delete.len()), (1, 4));
    assert_eq!(p.keep[0].reasons, [Reason::Newest]);
    assert_eq!(p.keep[0].stamp.to_string(), "20260405T120000Z");
}

fn at(y: i32, m: u32, d: u32, h: u32) -> Candidate {
    Candidate {
        stamp: Stamp::at(Utc.with_ymd_and_hms(y, m, d, h, 0, 0).unwrap()),
        tags: Some(vec![]),
    }
}

fn reasons_of(p: &Plan) -> Vec<(String, Vec<String>)> {
    p.keep
        .iter()
        .map(|k| {
            (
                k.stamp.to_string(),
                k.reasons.iter().map(|r| r.to_string()).collect(),
            )
        })
        .collect()
}

#[test]
fn hourly_last_and_within() {
    // Every 30 minutes over 3 days (the newest at 04-11 23:30).
    let base = Utc.with_ymd_and_hms(2026, 4, 9, 0, 0, 0).unwrap();
    let c: Vec<Candidate> = (0..144)
        .map(|i| Candidate {
            stamp: Stamp::at(base + Duration::minutes(30 * i)),
            tags: Some(vec![]),
        })
        .collect();
    let hourly = Policy {
        keep_hourly: 5,
        ..Policy::default()
    };
    let p = plan(&c, &[], &hourly);
    assert_eq!(
        names(p.kept_stamps().cloned()),
        [
            "20260411T193000Z",
            "20260411T203000Z",
            "20260411T213000Z",
            "20260411T223000Z",
            "20260411T233000Z"
        ]
    );
    let last = Policy {
        keep_last: 3,
        ..Policy::default()
    };
    assert_eq!(plan(&c, &[], &last).keep.len(), 3);
    // 36 h before the newest (23:30 on the 11th): 11:30 on the 10th on.
    let within = Policy {
        keep_within: Some(Within::parse("36h").unwrap()),
        ..Policy::default()
    };
    let p = plan(&c, &[], &within);
    assert_eq!(p.keep.len(), 73);
    assert_eq!(p.keep[0].stamp.to_string(), "20260410T113000Z");
    assert!(p.keep.iter().all(|k| k.reasons == [Reason::Within]));
}

#[test]
fn within_is_relative_to_the_newest_snapshot_not_now() {
    // A timer stopped long ago: everything is years old, the policy
    // still keeps the last 14 days of what exists.
    let c = days(2020, 1, 1, 31);
    let p = plan(
        &c,
        &[],
        &Policy {
            keep_within: Some(Within::parse("2w").unwrap()),
            ..Policy::default()
        },
    );
    assert_eq!(p.keep.len(), 15);
    assert_eq!(p.keep[0].stamp.to_string(), "20200117T120000Z");
}

#[test]
fn weekly_any_day_keeps_the_newest_of_a_week_without_sunday() {
    // Wednesdays only, four weeks, plus one Sunday.
    let c = vec![
        noon(2026, 3, 4),
        noon(2026, 3, 11),
        noon(2026, 3, 18),
        noon(2026, 3, 22),
        noon(2026, 3, 25),
    ];
    let strict = Policy {
        keep_weekly: 4,
        ..Policy::default()
    };
    let p = plan(&c, &[], &strict);
    // Only the Sunday counts; the newest is kept as the floor.
    assert_eq!(
        reasons_of(&p),
        [
            ("20260322T120000Z".to_string(), vec!["weekly".to_string()]),
            ("20260325T120000Z".to_string(), vec!["newest".to_string()]),
        ]
    );
    let any = Policy {
        weekly_any_day: true,
        ..strict
    };
    let p = plan(&c, &[], &any);
    // Weeks: 03-02..08, 03-09..15, 03-16..22 (its Sunday), 03-23..29.
    assert_eq!(
        names(p.kept_stamps().cloned()),
        [
            "20260304T120000Z",
            "20260311T120000Z",
            "20260322T120000Z",
            "20260325T120000Z"
        ]
    );
    assert_eq!(p.delete.len(), 1);
}

#[test]
fn monthly_and_yearly_any_day() {
    let c = vec![
        at(2024, 1, 1, 3),
        at(2024, 6, 15, 3),
        at(2025, 3, 10, 3),
        at(2025, 3, 20, 3),
        at(2026, 1, 1, 3),
        at(2026, 2, 1, 3),
        at(2026, 2, 9, 3),
    ];
    let strict = Policy {
        keep_yearly: 5,
        ..Policy::default()
    };
    let kept = |p: &Policy| names(plan(&c, &[], p).kept_stamps().cloned());
    assert_eq!(
        kept(&strict),
        ["20240101T030000Z", "20260101T030000Z", "20260209T030000Z"]
    );
    let any = Policy {
        weekly_any_day: true,
        ..strict
    };
    // (the newest stays as the floor)
    assert_eq!(
        kept(&any),
        [
            "20240101T030000Z",
            "20250320T030000Z",
            "20260101T030000Z",
            "20260209T030000Z"
        ]
    );
    let monthly_any = Policy {
        keep_monthly: 3,
        weekly_any_day: true,
        ..Policy::default()
    };
    // Feb 2026 keeps its 1st, Jan 2026 its 1st, Mar 2025 its newest.
    assert_eq!(
        kept(&monthly_any),
        [
            "20250320T030000Z",
            "20260101T030000Z",
            "20260201T030000Z",
            "20260209T030000Z"
        ]
    );
}

#[test]
fn every_reason_is_reported() {
    let mut c = days(2026, 3, 1, 1);
    c[0].tags = Some(vec!["pin".into()]);
    let p = plan(
        &c,
        &[],
        &Policy {
            keep_last: 1,
            keep_daily: 1,
            keep_monthly: 1,
            keep_tags: vec!["pin".into()],
            ..Policy::default()
        },
    );
    assert_eq!(reasons_of(&p)[0].1, ["last", "daily", "monthly", "tag:pin"]);
}

#[test]
fn within_durations_parse_and_refuse() {
    assert_eq!(Within::parse("36h").unwrap().hours(), 36);
    assert_eq!(Within::parse("14d").unwrap().hours(), 14 * 24);
    assert_eq!(Within::parse("2w").unwrap().hours(), 14 * 24);
    assert_eq!(Within::parse("1w2d12h").unwrap().hours(), 7 * 24 + 48 + 12);
    for bad in [
        "",
        "h",
        "12",
        "3x",
        "0d",
        "1.5d",
        "-1d",
        "99999999999999999999h",
    ] {
        assert!(Within::parse(bad).is_err(), "{bad:?} accepted");
    }
    let json = serde_json::to_string(&Within::parse("14d").unwrap()).unwrap();
    assert_eq!(json, "\"14d\"");
}

// ---- properties ---------------------------------------------------------

/// Snapshots spread over ~100 days, several a day, some tagged.
fn candidates() -> impl Strategy<Value = Vec<Candidate>> {
    let base = Utc.with_ymd_and_hms(2025, 12, 20, 0, 0, 0).unwrap();
    proptest::collection::btree_set((0i64..100 * 24, 0u32..3), 0..60).prop_flat_map(move |slots| {
        let n = slots.len();
        (
            Just(slots),
            proptest::collection::vec(
                prop_oneof![
                    6 => Just(Some(vec![])),
                    2 => Just(Some(vec!["keep".to_string()])),
                    1 => Just(Some(vec!["other".to_string()])),
                    1 => Just(None),
                ],
                n,
            ),
        )
            .prop_map(move |(slots, tags)| {
                slots
                    .into_iter()
                    .zip(tags)
                    .map(|((hour, seq), tags)| Candidate {
                        stamp: Stamp::at(base + Duration::hours(hour)).with_seq(seq + 1),
                        tags,
                    })
                    .collect()
            })
    })
}

fn policies() -> impl Strategy<Value = Policy> {
    (
        (0u32..9, 0u32..6, 0u32..5, any::<bool>()),
        (
            0u32..4,
            0u32..30,
            0u32..3,
            prop::option::of(1u64..200),
            any::<bool>(),
        ),
    )
        .prop_map(|((d, w, m, tag), (last, h, y, within, any_day))| Policy {
            keep_last: last,
            keep_hourly: h,
            keep_daily: d,
            keep_weekly: w,
            keep_monthly: m,
            keep_yearly: y,
            keep_within: within.map(|h| Within::parse(&format!("{h}h")).unwrap()),
            weekly_any_day: any_day,
            keep_tags: if tag { vec!["keep".into()] } else { vec![] },
        })
}

/// A second, naive reading of the rules: for one period rule, the set
/// of snapshots it names.
fn oracle(
    c: &[Candidate],
    n: u32,
    designated: impl Fn(NaiveDate) -> bool,
    any_day: bool,
    bucket: impl Fn(DateTime<Utc>) -> (i32, u32),
) -> BTreeSet<Stamp> {
    let all_buckets: BTreeSet<(i32, u32)> = c.iter().map(|c| bucket(c.stamp.time())).collect();
    let pick = |b: &(i32, u32)| -> Option<Stamp> {
        let in_bucket = c.iter().filter(|c| bucket(c.stamp.time()) == *b);
        let on_day = in_bucket
            .clone()
            .filter(|c| designated(c.stamp.time().date_naive()))
            .map(|c| c.stamp.clone())
            .max();
        on_day.or_else(|| {
            any_day
                .then(|| in_bucket.map(|c| c.stamp.clone()).max())
                .flatten()
        })
    };
    all_buckets
        .iter()
        .rev()
        .filter_map(pick)
        .take(n as usize)
        .collect()
}

fn expected_keep(c: &[Candidate], p: &Policy) -> BTreeSet<Stamp> {
    let any = p.weekly_any_day;
    let mut keep = oracle(c, p.keep_hourly, |_| true, true, hour_of);
    keep.extend(oracle(c, p.keep_daily, |_| true, true, day_of));
    keep.extend(oracle(
        c,
        p.keep_weekly,
        |d| d.weekday() == Weekday::Sun,
        any,
        week_of,
    ));
    keep.extend(oracle(c, p.keep_monthly, |d| d.day() == 1, any, month_of));
    keep.extend(oracle(
        c,
        p.keep_yearly,
        |d| d.month() == 1 && d.day() == 1,
        any,
        year_of,
    ));
    let mut sorted: Vec<&Stamp> = c.iter().map(|c| &c.stamp).collect();
    sorted.sort();
    keep.extend(
        sorted
            .iter()
            .rev()
            .take(p.keep_last as usize)
            .map(|s| (*s).clone()),
    );
    if let (Some(w), Some(newest)) = (&p.keep_within, sorted.last()) {
        let since = newest.time() - Duration::hours(w.hours() as i64);
        keep.extend(
            sorted
                .iter()
                .filter(|s| s.time() >= since)
                .map(|s| (*s).clone()),
        );
    }
    for x in c {
        match &x.tags {
            None => {
                keep.insert(x.stamp.clone());
            }
            Some(t) if t.iter().any(|t| p.keep_tags.contains(t)) => {
                keep.insert(x.stamp.clone());
            }
            Some(_) => {}
        }
    }
    if let Some(newest) = sorted.last() {
        keep.insert((*newest).clone());
    }
    keep
}

/// Each rule of `p` on its own (the any-day switch goes with the
/// calendar rules it relaxes).
fn single_rules(p: &Policy) -> Vec<Policy> {
    let none = Policy {
        weekly_any_day: p.weekly_any_day,
        ..Policy::default()
    };
    vec![
        Policy {
            keep_last: p.keep_last,
            ..none.clone()
        },
        Policy {
            keep_hourly: p.keep_hourly,
            ..none.clone()
        },
        Policy {
            keep_daily: p.keep_daily,
            ..none.clone()
        },
        Policy {
            keep_weekly: p.keep_weekly,
            ..none.clone()
        },
        Policy {
            keep_monthly: p.keep_monthly,
            ..none.clone()
        },
        Policy {
            keep_yearly: p.keep_yearly,
            ..none.clone()
        },
        Policy {
            keep_within: p.keep_within.clone(),
            ..none.clone()
        },
        Policy {
            keep_tags: p.keep_tags.clone(),
            ..none
        },
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn keeps_exactly_what_the_rules_name(c in candidates(), policy in policies()) {
        let p = plan(&c, &[], &policy);
        let kept: BTreeSet<Stamp> = p.kept_stamps().cloned().collect();
        prop_assert_eq!(&kept, &expected_keep(&c, &policy));
        // A partition of the input.
        let deleted: BTreeSet<Stamp> = p.delete.iter().cloned().collect();
        prop_assert!(kept.is_disjoint(&deleted));
        prop_assert_eq!(kept.len() + deleted.len(), c.len());
        // Oldest first.
        prop_assert!(p.delete.windows(2).all(|w| w[0] < w[1]));
        prop_assert!(p.keep.windows(2).all(|w| w[0].stamp < w[1].stamp));
    }

    #[test]
    fn never_deletes_a_tagged_or_unparseable_entry(
        c in candidates(),
        policy in policies(),
        junk in proptest::collection::vec("[a-z.-]{1,12}", 0..4),
    ) {
        let p = plan(&c, &junk, &policy);
        prop_assert_eq!(&p.unparseable, &junk);
        let deleted: BTreeSet<&Stamp> = p.delete.iter().collect();
        for x in &c {
            let protected = match &x.tags {
                None => true,
                Some(t) => t.iter().any(|t| policy.keep_tags.contains(t)),
            };
            if protected {
                prop_assert!(!deleted.contains(&x.stamp), "{} deleted", x.stamp);
            }
        }
    }

    #[test]
    fn never_deletes_the_newest(c in candidates(), policy in policies()) {
        let p = plan(&c, &[], &policy);
        if let Some(newest) = c.iter().map(|x| &x.stamp).max() {
            prop_assert!(!p.delete.contains(newest), "{} deleted", newest);
        }
    }

    #[test]
    fn a_snapshot_kept_by_any_single_rule_is_kept(c in candidates(), policy in policies()) {
        let combined: BTreeSet<Stamp> = plan(&c, &[], &policy).kept_stamps().cloned().collect();
        for single in single_rules(&policy) {
            for s in plan(&c, &[], &single).kept_stamps() {
                prop_assert!(combined.contains(s), "{} kept by {:?} alone but not by {:?}", s, single, policy);
            }
        }
    }

    #[test]
    fn a_second_run_deletes_nothing_more(c in candidates(), policy in policies()) {
        let first = plan(&c, &[], &policy);
        let remaining: Vec<Candidate> = c
            .iter()
            .filter(|x| first.kept_stamps().any(|s| *s == x.stamp))
            .cloned()
            .collect();
        let second = plan(&remaining, &[], &policy);
        prop_assert!(second.delete.is_empty(), "second run deletes {:?}", second.delete);
        prop_assert_eq!(second.keep, first.keep);
    }
}
