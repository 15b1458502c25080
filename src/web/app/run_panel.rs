//! The run panel: organ choice, box mode, progress and Cancel, the Run itself and
//! its metrics table.

use super::*;

/// Refresh the organ choice (a checkbox per organ the supports offer).
pub(super) fn render_organ_choice() {
    APP.with_borrow(|a| {
        let el: HtmlElement = by_testid("organ-select");
        let organs = a.offered_organs();
        if organs.is_empty() {
            el.set_inner_html(
                "Organs: load supports with label maps, or mark an organ by 6 points",
            );
            return;
        }
        let boxes: String = organs
            .iter()
            .map(|&l| {
                format!(
                    "<label><input type=checkbox data-organ='{l}' {}> {l} {}</label>",
                    if a.unselected.contains(&l) {
                        ""
                    } else {
                        "checked"
                    },
                    html_escape(&a.table.name(l))
                )
            })
            .collect();
        el.set_inner_html(&format!("Organs: {boxes}"));
    });
}

pub(super) fn set_progress(fraction: f64, text: &str) {
    let p: HtmlElement = by_testid("progress");
    let _ = p.set_attribute("value", &format!("{:.4}", fraction.clamp(0.0, 1.0)));
    let t: HtmlElement = by_testid("progress-text");
    t.set_text_content(Some(text));
}

pub(super) fn fmt_eta(s: f64) -> String {
    if s < 60.0 {
        format!("about {:.0} s left", s.max(1.0))
    } else {
        format!("about {} min {:02.0} s left", (s / 60.0) as u64, s % 60.0)
    }
}

/// Run disabled and Cancel enabled while a run is in progress, the reverse otherwise.
pub(super) fn set_running(running: bool) {
    let run: HtmlButtonElement = by_testid("run-button");
    run.set_disabled(running);
    let cancel: HtmlButtonElement = by_testid("cancel-button");
    cancel.set_disabled(!running);
}

/// The run's inputs, copied out of the app state (the state stays usable meanwhile).
pub(super) type RunInputs = (
    Vec<SupportInput>,
    Vec<(CtVolume, Option<LabelVolume>)>,
    RunSettings,
);

pub(super) fn run_inputs() -> Result<RunInputs> {
    let localizer: HtmlSelectElement = by_testid("localizer-select");
    let localizer = LocalizerChoice::parse(&localizer.value())?;
    let mode: HtmlSelectElement = by_testid("mode-select");
    let slab: HtmlInputElement = by_testid("slab-mm");
    let mode = box_mode(&mode.value(), &slab.value())?;
    let mask: HtmlSelectElement = by_testid("mask-select");
    let prior_weight = mask_choice(&mask.value())?;
    APP.with_borrow(|a| {
        let organs = a.run_organs()?;
        let supports = a
            .supports
            .iter()
            .map(|c| SupportInput {
                name: c.name.clone(),
                ct: c.canon.clone(),
                labels: c.labels.clone(),
                points: c.points.clone(),
            })
            .collect();
        let queries = a
            .queries
            .iter()
            .map(|c| (c.canon.clone(), c.truth.clone()))
            .collect();
        Ok((
            supports,
            queries,
            RunSettings {
                organs,
                mode,
                localizer,
                prior_weight,
            },
        ))
    })
}

/// The backend the page's address asks for (`?backend=cpu`).
pub(super) fn backend_choice() -> BackendChoice {
    BackendChoice::from_url(&doc().url().unwrap_or_default())
}

/// The models, built on first use (weights downloaded with a progress bar).
pub(super) async fn take_models() -> Result<Models> {
    if let Some(m) = MODELS.with_borrow_mut(|m| m.take()) {
        return Ok(m);
    }
    let m = run::load_models(backend_choice(), &mut |what, f| {
        set_progress(f, &format!("{what}: {:.0} %", 100.0 * f));
    })
    .await?;
    let gpu_el: HtmlElement = by_testid("gpu-status");
    gpu_el.set_text_content(Some(&format!("models run on: {}", m.backend)));
    Ok(m)
}

pub(super) async fn on_run() -> Result<String> {
    let (supports, queries, settings) = run_inputs()?;
    CANCEL.store(false, Ordering::Relaxed);
    // Return to the browser first: the click ends and "running…" shows before any work.
    crate::web::yield_to_browser().await;
    let mut models = take_models().await?;
    let asked = settings.organs.clone();
    let n = queries.len();
    let start = web_time::Instant::now();
    let result = run::run(
        &mut models,
        supports,
        &queries,
        &settings,
        &CANCEL,
        &mut |p: RunProgress| {
            let eta = p.eta_s.map(fmt_eta).unwrap_or_default();
            set_progress(
                p.fraction,
                &format!("{} — {:.0} % {eta}", p.stage, 100.0 * p.fraction),
            );
        },
        &mut |qi, out: QueryOutcome| {
            dispatch(Msg::QueryDone {
                index: qi,
                labels: out.result.labels,
                result: ResultView {
                    asked: asked.clone(),
                    organs: out.result.organs,
                    metrics: out.metrics,
                },
            })
        },
    )
    .await;
    MODELS.with_borrow_mut(|m| *m = Some(models));
    let times = result?;
    set_progress(1.0, "done");
    offer_result_downloads()?;
    render_metrics();
    Ok(format!(
        "done: {n} query CT(s) segmented in {:.0} s ({}); memory {:.0} MiB",
        start.elapsed().as_secs_f64(),
        times.summary(),
        crate::web::wasm_memory_mib()
    ))
}

/// Metrics of the shown query as an HTML table (when its label map was given).
pub(super) fn render_metrics() {
    let html = APP.with_borrow(|a| {
        let names = &a.table;
        let Some(m) = a.shown_case()
            .and_then(|c| c.result.as_ref())
            .and_then(|r| r.metrics.as_ref())
        else {
            return String::new();
        };
        let f = |v: Option<f64>| v.map_or("-".into(), |x| format!("{x:.1}"));
        let rows: String = m
            .iter()
            .map(|r| {
                format!(
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    r.label,
                    html_escape(&names.name(r.label)),
                    f(r.dsc),
                    f(r.hd95_mm),
                    f(r.box_iou),
                    f(r.wd_mm)
                )
            })
            .collect();
        format!(
            "<table><tr><th>label</th><th>organ</th><th>DSC %</th><th>HD95 mm</th><th>box IoU %</th><th>WD mm</th></tr>{rows}</table>"
        )
    });
    let el: HtmlElement = by_testid("metrics-table");
    el.set_inner_html(&html);
}

/// Run in the background; its end goes to the page's state.
pub(super) fn start_run() {
    wasm_bindgen_futures::spawn_local(async {
        let r = on_run().await;
        dispatch(Msg::RunFinished(r));
    });
}

/// Wire the run panel: the organ choice, Run and Cancel.
pub(super) fn wire() {
    on_event("organ-select", "change", |e| {
        if let Some((label, chosen)) = checked_label(&e, "data-organ") {
            dispatch(Msg::OrganChosen { label, chosen });
        }
    });
    on_click("run-button", || dispatch(Msg::RunPressed));
    on_click("cancel-button", || dispatch(Msg::CancelPressed));
}
