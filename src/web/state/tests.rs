//! The page's state driven through [`update`] as a user drives the page: loads, the case
//! shown, extreme points, a run and its results, corrections, the viewer's settings.

use super::cases::{case_of_ct, demo_cases};
use super::update::DEMO_LOADED;
use super::*;
use crate::volume::labels::BoxVox;
use crate::volume::synthetic::{PhantomOptions, phantom};
use crate::web::viewer::{EXTREME_POINT_PROMPTS, Pane, result_view};

const DIMS: [usize; 3] = [24, 20, 16];

fn small(seed: u64, dims: [usize; 3]) -> (CtVolume, LabelVolume) {
    phantom(&PhantomOptions {
        dims,
        spacing_mm: [12.0; 3],
        seed,
        ras: false,
    })
    .unwrap()
}

fn case(name: &str, seed: u64) -> Case {
    case_of_ct(name.into(), &small(seed, DIMS).0)
}

fn label_file(seed: u64) -> (String, LabelFile) {
    (
        format!("case{seed}.label.nii.gz"),
        LabelFile::Map(small(seed, DIMS).1),
    )
}

/// What a successful load asks of the page.
fn loaded(said: &str) -> Vec<Effect> {
    vec![
        Effect::Status(said.into()),
        Effect::Redraw,
        Effect::RenderOrganChoice,
        Effect::RenderEditOrgans,
    ]
}

/// The only effect is an error status containing `part`.
fn assert_error(effects: &[Effect], part: &str) {
    match effects {
        [Effect::Error(m)] => assert!(m.starts_with("error: ") && m.contains(part), "{m}"),
        other => panic!("expected one error with {part:?}, got {other:?}"),
    }
}

fn status(text: &str) -> Vec<Effect> {
    vec![Effect::Status(text.into()), Effect::Redraw]
}

fn organ(label: u16) -> OrganLocalization {
    let bbox = BoxVox {
        min: [2, 2, 2],
        max: [8, 8, 8],
    };
    OrganLocalization {
        confidence: 0.8,
        ..OrganLocalization::placed(label, bbox, [[0; 3]; 6], Vec::new(), "medlam")
    }
}

/// Two supports with label maps, `queries` queries, as loaded through the inputs.
fn loaded_app(queries: usize) -> App {
    let mut a = App::default();
    update(
        &mut a,
        Msg::SupportsLoaded(vec![case("s1", 1), case("s2", 2)]),
    );
    update(
        &mut a,
        Msg::SupportLabelsLoaded(vec![label_file(1), label_file(2)]),
    );
    let cases = (0..queries).map(|n| case(&format!("q{n}"), 10 + n as u64));
    let cases = cases.collect();
    update(
        &mut a,
        Msg::QueriesLoaded {
            cases,
            memory_mib: 1.0,
        },
    );
    a
}

#[test]
fn loads_show_the_new_cases_and_pair_label_maps() {
    let mut a = App::default();
    assert_eq!(a.opacity, 0.45);
    assert_eq!(
        update(&mut a, Msg::Reading),
        vec![Effect::Status("reading…".into()), Effect::HideDownloads]
    );
    let e = update(
        &mut a,
        Msg::SupportsLoaded(vec![case("s1", 1), case("s2", 2)]),
    );
    assert_eq!(e, loaded("2 support CT(s) loaded"));
    assert_eq!(a.shown, Some(Shown::Support(0)));
    assert!(a.recentre && a.offered_organs().is_empty());
    let e = update(
        &mut a,
        Msg::SupportLabelsLoaded(vec![label_file(1), label_file(2)]),
    );
    assert_eq!(e, loaded("2 support label map(s) loaded"));
    assert!(a.supports.iter().all(|c| c.labels.is_some()));
    assert!(!a.offered_organs().is_empty());
    let e = update(
        &mut a,
        Msg::QueriesLoaded {
            cases: vec![case("q", 3)],
            memory_mib: 123.4,
        },
    );
    assert_eq!(e, loaded("1 query CT(s) loaded; memory 123 MiB"));
    assert_eq!(a.shown, Some(Shown::Query(0)));
    // The new case is shown from its middle.
    assert_eq!(a.settle_cursor(), Some(DIMS.map(|d| d / 2)));
    assert!(!a.recentre);
    let e = update(&mut a, Msg::QueryLabelsLoaded(vec![label_file(3)]));
    assert_eq!(
        e,
        loaded("1 query label map(s) loaded (used only for metrics)")
    );
    assert!(a.queries[0].truth.is_some() && a.queries[0].labels.is_none());
    let table = LabelTable([(1, "liver".into()), (2, "spleen".into())].into());
    let e = update(&mut a, Msg::LabelTableLoaded(Some(table)));
    assert_eq!(e, loaded("2 label names loaded"));
    assert!(a.table_chosen && a.table.name(1) == "liver");
    assert_eq!(update(&mut a, Msg::LabelTableLoaded(None)), loaded(""));
    let keys: Vec<String> = a.all_cases().map(|(s, _)| s.key()).collect();
    assert_eq!(keys, ["s0", "s1", "q0"]);
}

#[test]
fn label_maps_that_do_not_fit_are_refused() {
    let mut a = App::default();
    update(
        &mut a,
        Msg::SupportsLoaded(vec![case("s1", 1), case("s2", 2)]),
    );
    let other = (
        "other.nii.gz".into(),
        LabelFile::Map(small(1, [20, 20, 16]).1),
    );
    let e = update(&mut a, Msg::SupportLabelsLoaded(vec![other, label_file(2)]));
    assert_error(&e, "other.nii.gz does not match s1");
    assert!(a.supports.iter().all(|c| c.labels.is_none()));
    let e = update(&mut a, Msg::SupportLabelsLoaded(vec![label_file(1)]));
    assert_error(&e, "2 support CTs but 1 support label maps");
    let e = update(
        &mut a,
        Msg::LoadFailed(Error::Corrupt("broken.nii.gz".into())),
    );
    assert_error(&e, "broken.nii.gz");
    assert_eq!(a.supports.len(), 2);
}

#[test]
fn the_case_choice_switches_cases_and_their_downloads() {
    let mut a = loaded_app(2);
    assert_eq!(a.case_of_key("s2"), None);
    assert_eq!(a.case_of_key("q1"), Some(Shown::Query(1)));
    for bad in ["", "s", "x0", "s-1", "q2"] {
        assert_eq!(a.case_of_key(bad), None, "{bad}");
    }
    a.recentre = false;
    let e = update(&mut a, Msg::ShowCase("s1".into()));
    use Effect::*;
    let tail = [RenderMetrics, RenderEditOrgans];
    assert_eq!(
        e,
        [&[Redraw, HideDownloads, OfferLabelDownload][..], &tail].concat()
    );
    assert_eq!(a.shown, Some(Shown::Support(1)));
    assert!(a.recentre);
    let e = update(&mut a, Msg::ShowCase("q1".into()));
    assert_eq!(e, [&[Redraw, HideDownloads][..], &tail].concat());
    assert_eq!(a.shown_case().unwrap().name, "q1");
    // An unknown value keeps the case shown.
    update(&mut a, Msg::ShowCase("q9".into()));
    assert_eq!(a.shown, Some(Shown::Query(1)));
}

#[test]
fn an_organ_is_marked_by_six_clicked_points_with_undo() {
    let mut a = loaded_app(1);
    update(&mut a, Msg::ShowCase("s0".into()));
    a.settle_cursor();
    let prompt = |n: usize| format!("organ 9: click {} ({}/6)", EXTREME_POINT_PROMPTS[n - 1], n);
    let e = update(&mut a, Msg::StartMarking("liver".into()));
    assert_error(&e, "label number");
    assert_eq!(
        update(&mut a, Msg::StartMarking(" 9 ".into())),
        status(&prompt(1))
    );
    let click = |a: &mut App, pane, pixel| {
        update(
            a,
            Msg::PaneClick {
                pane,
                pixel,
                shift: false,
            },
        )
    };
    assert_eq!(click(&mut a, Pane::Axial, [3, 4]), status(&prompt(2)));
    assert_eq!(a.cursor, [3, 4, 8]);
    assert_eq!(click(&mut a, Pane::Axial, [20, 4]), status(&prompt(3)));
    assert_eq!(update(&mut a, Msg::UndoPoint), status(&prompt(2)));
    for (n, (pane, pixel)) in [
        (Pane::Axial, [20, 4]),
        (Pane::Axial, [10, 1]),
        (Pane::Axial, [10, 18]),
        (Pane::Coronal, [10, 14]),
    ]
    .into_iter()
    .enumerate()
    {
        assert_eq!(click(&mut a, pane, pixel), status(&prompt(n + 3)));
    }
    // The coronal pane's row 0 is the top slice: row 1 is k = 14.
    let e = click(&mut a, Pane::Coronal, [10, 1]);
    assert_eq!(e, status("organ 9 marked by 6 extreme points on s1"));
    assert_eq!(a.marking, None);
    let points = [
        [3, 4, 8],
        [20, 4, 8],
        [10, 1, 8],
        [10, 18, 8],
        [10, 18, 1],
        [10, 18, 14],
    ];
    assert_eq!(a.supports[0].points, vec![(9, points)]);
    assert!(a.offered_organs().contains(&9));
    assert_eq!(update(&mut a, Msg::UndoPoint), vec![]);
    // Marking again replaces the organ's points.
    update(&mut a, Msg::StartMarking("9".into()));
    for _ in 0..6 {
        click(&mut a, Pane::Axial, [1, 1]);
    }
    assert_eq!(a.supports[0].points.len(), 1);
    assert_eq!(a.supports[0].points[0].1[0], [1, 1, 14]);
    // Not on a query.
    update(&mut a, Msg::StartMarking("5".into()));
    update(&mut a, Msg::ShowCase("q0".into()));
    let e = click(&mut a, Pane::Axial, [1, 1]);
    assert_eq!(e.len(), 2);
    assert_error(&e[..1], "show a support CT to mark points on it");
    assert_eq!(e[1], Effect::Redraw);
    let e = update(&mut a, Msg::StartMarking("5".into()));
    assert_error(&e, "load a support CT (and show it) before marking points");
}

#[test]
fn a_run_is_started_once_and_cancelled() {
    let mut a = loaded_app(1);
    use Effect::*;
    let e = update(&mut a, Msg::RunPressed);
    assert_eq!(
        e,
        [
            SetRunning(true),
            HideDownloads,
            Status("running…".into()),
            StartRun
        ]
    );
    assert!(a.running);
    assert_eq!(
        update(&mut a, Msg::RunPressed),
        vec![],
        "a second Run while running"
    );
    let e = update(&mut a, Msg::CancelPressed);
    assert_eq!(
        e,
        [CancelRun, Status("cancelling after this slice…".into())]
    );
    let stopped = Err(crate::Error::Cancelled);
    let e = update(&mut a, Msg::RunFinished(stopped));
    let said = Status("cancelled".into());
    assert_eq!(e, [said, SetRunning(false), Redraw, RenderEditOrgans]);
    assert!(!a.running && !a.cancel_requested);
    // The next run fails without Cancel: an error.
    update(&mut a, Msg::RunPressed);
    let e = update(
        &mut a,
        Msg::RunFinished(Err(crate::Error::InvalidArgument("no organ".into()))),
    );
    assert_error(&e[..1], "no organ");
    assert!(!a.running);
}

#[test]
fn results_arrive_on_their_query_and_are_shown() {
    let mut a = loaded_app(2);
    update(&mut a, Msg::ShowCase("s0".into()));
    update(&mut a, Msg::RunPressed);
    let labels = small(11, DIMS).1;
    let at = result_view(&labels).expect("the phantom has organs");
    let result = ResultView {
        asked: vec![1, 7],
        organs: vec![organ(7)],
        metrics: None,
    };
    let e = update(
        &mut a,
        Msg::QueryDone {
            index: 1,
            labels,
            result,
        },
    );
    assert_eq!(e, [Effect::Redraw]);
    assert_eq!(a.shown, Some(Shown::Query(1)));
    // Shown where the result is, not from the middle.
    assert_eq!(a.settle_cursor(), Some(at));
    assert!(a.queries[1].result.is_some() && a.queries[0].result.is_none());
    let e = update(&mut a, Msg::RunFinished(Ok("done: 2 query CT(s)".into())));
    assert_eq!(e[0], Effect::Status("done: 2 query CT(s)".into()));
    // Back on the query after a support: its result files again.
    update(&mut a, Msg::ShowCase("s0".into()));
    let e = update(&mut a, Msg::ShowCase("q1".into()));
    assert!(e.contains(&Effect::OfferResultDownloads) && e.contains(&Effect::RenderMetrics));
    // The correction panel offers the supports' organs and those of the result.
    let mut want = a.offered_organs();
    want.push(7);
    assert_eq!(a.edit_organs(), want);
    update(&mut a, Msg::ShowCase("s0".into()));
    assert_eq!(a.edit_organs(), Vec::<u16>::new());
}

#[test]
fn loads_replace_the_shown_cases() {
    let mut a = loaded_app(2);
    update(&mut a, Msg::ShowCase("q1".into()));
    a.settle_cursor();
    let e = update(
        &mut a,
        Msg::QueriesLoaded {
            cases: vec![case("other", 5)],
            memory_mib: 2.0,
        },
    );
    assert_eq!(e, loaded("1 query CT(s) loaded; memory 2 MiB"));
    assert_eq!(a.shown, Some(Shown::Query(0)));
    assert_eq!(a.shown_case().unwrap().name, "other");
    // No query left: nothing shown, nothing to draw; the wheel does nothing.
    update(
        &mut a,
        Msg::QueriesLoaded {
            cases: vec![],
            memory_mib: 2.0,
        },
    );
    assert_eq!(a.shown, None);
    assert_eq!(a.settle_cursor(), None);
    assert!(a.recentre, "the next case shown is centred");
    assert_eq!(
        update(&mut a, Msg::Scroll { axis: 2, step: 1 }),
        [Effect::Redraw]
    );
    let click = Msg::PaneClick {
        pane: Pane::Axial,
        pixel: [1, 1],
        shift: false,
    };
    assert_eq!(update(&mut a, click), [Effect::Redraw]);
    // Supports loaded while a query was shown: the first support is shown, with the
    // support label maps chosen before.
    let cases = vec![case("q", 3)];
    update(
        &mut a,
        Msg::QueriesLoaded {
            cases,
            memory_mib: 0.0,
        },
    );
    update(
        &mut a,
        Msg::SupportsLoaded(vec![case("s3", 3), case("s4", 4)]),
    );
    assert_eq!(a.shown, Some(Shown::Support(0)));
    assert_eq!(a.shown_case().unwrap().name, "s3");
    assert!(a.supports.iter().all(|c| c.labels.is_some()));
    // As many supports as label maps, or an error (the new supports stay, unlabelled).
    let e = update(&mut a, Msg::SupportsLoaded(vec![case("s5", 5)]));
    assert_error(&e, "1 support CTs but 2 support label maps");
    assert_eq!(a.supports[0].name, "s5");
}

#[test]
fn a_correction_is_drawn_then_resegmented() {
    let mut a = loaded_app(1);
    a.settle_cursor();
    let e = update(&mut a, Msg::EditOrgan(Some(7)));
    let said = "correcting organ 7: draw a box or click points on the axial pane, then Re-segment";
    assert_eq!(e, status(said));
    // A click, not a drag: no box.
    update(&mut a, Msg::AxialPress([2, 3]));
    assert_eq!(update(&mut a, Msg::AxialRelease([3, 9])), vec![]);
    assert_eq!(
        update(&mut a, Msg::AxialRelease([9, 9])),
        vec![],
        "no press"
    );
    update(&mut a, Msg::AxialPress([10, 12]));
    let e = update(&mut a, Msg::AxialRelease([2, 3]));
    assert_eq!(e, status("box [2, 3]..[10, 12] drawn: press Re-segment"));
    update(&mut a, Msg::EditTool { point: true });
    update(&mut a, Msg::AxialPress([1, 1]));
    assert_eq!(a.edit.drag_from, None, "the point tool draws no box");
    let click = |a: &mut App, pixel, shift| {
        let pane = Pane::Axial;
        update(a, Msg::PaneClick { pane, pixel, shift })
    };
    let e = click(&mut a, [5, 6], false);
    assert_eq!(
        e,
        status("organ point 1 on slice 8: press Re-segment when done")
    );
    let e = click(&mut a, [7, 6], true);
    assert_eq!(
        e,
        status("background point 2 on slice 8: press Re-segment when done")
    );
    let fix = a.correction().unwrap();
    assert_eq!((fix.query, fix.organ, fix.k), (0, 7, 8));
    assert_eq!(fix.prompt.bbox, Some([2.0, 3.0, 10.0, 12.0]));
    let positive: Vec<bool> = fix.prompt.points.iter().map(|p| p.positive).collect();
    assert_eq!(positive, [true, false]);
    assert_eq!(fix.prompt.points[0].xy, [5.0, 6.0]);
    let empty = a.queries[0].labels_or_empty().unwrap();
    assert!(empty.data.iter().all(|&v| v == 0) && empty.dims == DIMS);
    use Effect::*;
    let e = update(&mut a, Msg::ResegmentPressed);
    assert_eq!(
        e,
        [Status("re-segmenting the slice…".into()), StartResegment]
    );
    let labels = small(10, DIMS).1;
    assert_eq!(
        update(&mut a, Msg::SliceResegmented { query: 0, labels }),
        vec![]
    );
    assert!(a.queries[0].labels.is_some());
    assert!(a.edit.bbox.is_none() && a.edit.points.is_empty());
    let e = update(
        &mut a,
        Msg::ResegmentFinished(Ok("slice 8 re-segmented".into())),
    );
    assert_eq!(e, status("slice 8 re-segmented"));
    let e = update(
        &mut a,
        Msg::ResegmentFinished(Err(crate::Error::InvalidArgument("x".into()))),
    );
    assert_eq!(e.len(), 2);
    assert_error(&e[..1], "x");
    click(&mut a, [5, 6], false);
    assert_eq!(update(&mut a, Msg::ClearPrompts), [Redraw]);
    assert!(a.edit.points.is_empty());
    assert_eq!(
        update(&mut a, Msg::EditOrgan(None)),
        status("correction off")
    );
    assert!(a.edit.point_tool, "the tool is kept");
    let err = a.correction().unwrap_err().to_string();
    assert!(err.contains("choose the organ to correct"), "{err}");
    update(&mut a, Msg::ShowCase("s0".into()));
    update(&mut a, Msg::EditOrgan(Some(1)));
    let err = a.correction().unwrap_err().to_string();
    assert!(err.contains("show a query to correct"), "{err}");
}

#[test]
fn viewer_settings_organ_choice_and_box_mode() {
    let mut a = loaded_app(1);
    use Effect::*;
    assert_eq!(update(&mut a, Msg::Preset(1)), [Redraw]);
    assert_eq!(a.preset, 1);
    update(&mut a, Msg::Preset(99));
    assert_eq!(a.preset, crate::web::viewer::PRESETS.len() - 1);
    update(&mut a, Msg::Opacity(1.5));
    assert_eq!(a.opacity, 1.0);
    update(&mut a, Msg::Opacity(-0.5));
    assert_eq!(a.opacity, 0.0);
    for (label, shown) in [(2, false), (2, false), (3, false), (2, true)] {
        assert_eq!(update(&mut a, Msg::LabelShown { label, shown }), [Redraw]);
    }
    assert_eq!(a.hidden, [3]);
    update(&mut a, Msg::ShowBoxes(false));
    assert!(a.hide_boxes);
    // The wheel moves the slice within the volume.
    a.settle_cursor();
    for _ in 0..20 {
        update(&mut a, Msg::Scroll { axis: 2, step: 1 });
    }
    assert_eq!(a.cursor[2], DIMS[2] - 1);
    update(&mut a, Msg::Scroll { axis: 0, step: -1 });
    assert_eq!(a.cursor[0], DIMS[0] / 2 - 1);
    // Unticked organs are left out of the run.
    let offered = a.offered_organs();
    let first = offered[0];
    let e = update(
        &mut a,
        Msg::OrganChosen {
            label: first,
            chosen: false,
        },
    );
    assert_eq!(e, vec![]);
    assert_eq!(a.run_organs().unwrap(), offered[1..]);
    update(
        &mut a,
        Msg::OrganChosen {
            label: first,
            chosen: true,
        },
    );
    assert_eq!(a.run_organs().unwrap(), offered);
    let err = App::default().run_organs().unwrap_err().to_string();
    assert!(err.contains("load support CTs"), "{err}");
    a.queries.clear();
    let err = a.run_organs().unwrap_err().to_string();
    assert!(err.contains("load query CTs first"), "{err}");
    assert_eq!(box_mode("wpl", "").unwrap(), BoxMode::Wpl);
    assert_eq!(
        box_mode("spl", " 6 ").unwrap(),
        BoxMode::Spl { slab_mm: 6.0 }
    );
    for slab in ["", "-1", "0", "abc", "inf"] {
        assert!(box_mode("spl", slab).is_err(), "{slab}");
    }
    assert_eq!(mask_choice("auto").unwrap(), None);
    assert_eq!(mask_choice("prior").unwrap(), Some(1.0));
    assert_eq!(mask_choice("sam").unwrap(), Some(0.0));
    assert!(mask_choice("0.5").is_err());
}

#[test]
fn the_demo_replaces_everything_with_phantoms() {
    let mut a = loaded_app(2);
    a.table_chosen = true;
    let (supports, query) = demo_cases().unwrap();
    let query = Box::new(query);
    let e = update(&mut a, Msg::DemoLoaded { supports, query });
    use Effect::*;
    let said = Status(DEMO_LOADED.into());
    let want = [
        ClearFileInputs,
        said,
        Redraw,
        RenderOrganChoice,
        RenderEditOrgans,
        OfferLabelDownload,
    ];
    assert_eq!(e, want);
    assert_eq!((a.supports.len(), a.queries.len()), (3, 1));
    assert!(a.support_labels.is_empty() && a.query_labels.is_empty() && !a.table_chosen);
    assert_eq!(a.shown, Some(Shown::Support(0)));
    assert_eq!(a.offered_organs(), [1, 2, 3, 4]);
    assert_eq!(a.table.name(3), "left_kidney");
    let q = &a.queries[0];
    assert_eq!(q.name, "phantom_query");
    assert!(q.truth.is_some() && q.labels.is_none());
}
