//! Running a scenario: readiness and peer-status checks read typed from `/status`, the load and the steps on a timeline with progress, then the report.

use super::*;

pub(super) async fn admin_status(addr: SocketAddr) -> Option<AdminStatus> {
    let (_, body) = tokio::time::timeout(
        Duration::from_secs(5),
        load::get_limited(addr, "admin", "/status", 64 << 20),
    )
    .await
    .ok()?
    .ok()?;
    serde_json::from_slice(&body).ok()
}

/// Whether a peer's status is what the check asks for.
pub(super) fn holds(check: &meshfed_crds::scenario::PeerStatusCheck, status: &PeerStatus) -> bool {
    if status.peer != check.peer {
        return false;
    }
    if let Some(s) = &check.state
        && format!("{:?}", status.state) != *s
    {
        return false;
    }
    if let Some((t, st, r)) = &check.condition {
        let Some(c) = status.conditions.iter().find(|c| c.type_.as_str() == t) else {
            return false;
        };
        if c.status != *st || r.as_ref().is_some_and(|r| *r != c.reason) {
            return false;
        }
    }
    check
        .bundle_sequence
        .is_none_or(|n| status.peer_bundle_sequence.is_some_and(|got| got >= n))
        && check
            .imported_services
            .is_none_or(|n| status.imported_services >= n)
}

/// Reads the control planes' status twice a second and notes in `reached` when each
/// `peerStatus` and `certificatesIssued` expectation (by index) first holds, in ms from `t0`.
/// Certificates are counted across control-plane restarts: after the timeline restarted a
/// mesh's control plane (`restarts` counts them per mesh), its counter starts again from 0.
pub(super) async fn watch_status(
    layout: Layout,
    expect: Vec<Expectation>,
    t0: Instant,
    reached: Arc<std::sync::Mutex<report::Reached>>,
    restarts: Restarts,
) {
    let checks: Vec<(usize, meshfed_crds::scenario::PeerStatusCheck)> = expect
        .iter()
        .enumerate()
        .filter_map(|(i, e)| match e {
            Expectation::PeerStatus(c) => Some((i, c.clone())),
            _ => None,
        })
        .collect();
    let certs: Vec<(usize, String, f64, u64)> = expect
        .iter()
        .enumerate()
        .filter_map(|(i, e)| match e {
            Expectation::CertificatesIssued {
                mesh,
                from,
                at_least,
            } => Some((i, mesh.clone(), from.as_secs_f64() * 1e3, *at_least)),
            _ => None,
        })
        .collect();
    if checks.is_empty() && certs.is_empty() {
        return;
    }
    // Per mesh: the counter last read and the restarts then; per expectation: certificates
    // signed since `from`.
    let mut last: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut signed: BTreeMap<usize, u64> = BTreeMap::new();
    loop {
        for m in &layout.meshes {
            let mine: Vec<_> = checks.iter().filter(|(_, c)| c.mesh == m.name).collect();
            let my_certs: Vec<_> = certs.iter().filter(|c| c.1 == m.name).collect();
            if mine.is_empty() && my_certs.is_empty() {
                continue;
            }
            let Some(st) = admin_status(m.admin).await else {
                continue;
            };
            let t = Instant::now().saturating_duration_since(t0).as_secs_f64() * 1e3;
            let now = st.control.certificates_issued;
            let generation = restarts
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(&m.name)
                .copied()
                .unwrap_or(0);
            let new = match last.insert(m.name.clone(), (now, generation)) {
                Some((b, g)) if g == generation => now.saturating_sub(b),
                Some(_) => now,
                None => 0,
            };
            let imports = st.peering.map(|p| p.imports).unwrap_or_default();
            let mut r = reached
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (i, c) in mine {
                if t >= c.from.as_secs_f64() * 1e3 && imports.iter().any(|p| holds(c, &p.status)) {
                    r.entry(*i).or_insert(t);
                }
            }
            for (i, _, from, at_least) in my_certs {
                if t >= *from {
                    let n = signed.entry(*i).or_default();
                    *n += new;
                    if *n >= *at_least {
                        r.entry(*i).or_insert(t);
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// How many times the timeline stopped or started each mesh's control plane.
pub(super) type Restarts = Arc<std::sync::Mutex<BTreeMap<String, u64>>>;

/// One progress line: the last second's rate, success and serving meshes.
pub(super) fn progress(samples: &Samples, now_ms: f64, step: &str) -> String {
    let all = load::lock(samples);
    let recent: Vec<&load::Sample> = all
        .iter()
        .filter(|s| s.t_ms >= now_ms - 1000.0 && s.t_ms < now_ms)
        .collect();
    let ok = recent.iter().filter(|s| s.ok()).count();
    let mut by: BTreeMap<&str, usize> = BTreeMap::new();
    for s in recent.iter().filter(|s| s.ok()) {
        *by.entry(s.mesh.as_deref().unwrap_or("?")).or_default() += 1;
    }
    let served: Vec<String> = by
        .iter()
        .map(|(m, n)| format!("{m} {:.0}%", 100.0 * *n as f64 / ok.max(1) as f64))
        .collect();
    format!(
        "{:>6.1}s  {:<28} {:>4} req/s  ok {:>5.1}%  served by: {}",
        now_ms / 1000.0,
        step,
        recent.len(),
        if recent.is_empty() {
            100.0
        } else {
            100.0 * ok as f64 / recent.len() as f64
        },
        if served.is_empty() {
            "-".into()
        } else {
            served.join(", ")
        }
    )
}

/// Runs `plan` and writes its reports.
pub async fn run(plan: &ScenarioPlan, opts: &Options) -> Result<Outcome> {
    let started_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let t_setup = Instant::now();
    let mut lab = Lab::up(plan, opts).await?;
    (opts.say)(&format!(
        "ready in {:.1}s; {} rps from {}/{}/{} to {} for {:?}",
        t_setup.elapsed().as_secs_f64(),
        plan.load.rps,
        plan.load.mesh,
        plan.load.namespace,
        plan.load.service,
        plan.load.host,
        plan.duration
    ));
    let entry = lab
        .layout
        .mesh(&plan.load.mesh)
        .and_then(|m| m.workloads.iter().find_map(|w| w.outbound))
        .context("the calling workload has no outbound listener")?;
    let samples: Samples = Arc::default();
    let t0 = Instant::now() + Duration::from_millis(100);
    let load = tokio::spawn(load::run(
        load::Target {
            addr: entry,
            host: plan.load.host.clone(),
            path: plan.load.path.clone(),
        },
        plan.load.rps,
        t0,
        plan.duration,
        samples.clone(),
    ));
    let reached = Arc::new(std::sync::Mutex::new(report::Reached::new()));
    let restarts = Restarts::default();
    let watcher = tokio::spawn(watch_status(
        lab.layout.clone(),
        plan.expect.clone(),
        t0,
        reached.clone(),
        restarts.clone(),
    ));
    // The timeline, with a progress line every second.
    let mut next = 0;
    let mut phase = "start".to_owned();
    let mut tick = 1u32;
    loop {
        let step_at = plan.steps.get(next).map(|s| t0 + s.at);
        let tick_at = t0 + Duration::from_secs(u64::from(tick));
        let end = t0 + plan.duration;
        let wake = [step_at, Some(tick_at), Some(end)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(end);
        tokio::time::sleep_until(wake.into()).await;
        if let Some(at) = step_at
            && Instant::now() >= at
        {
            let step = &plan.steps[next];
            (opts.say)(&format!(
                "{:>6.1}s  step: {}",
                step.at.as_secs_f64(),
                step.label
            ));
            lab.apply(&step.action).await?;
            // A kill or restart ends the process whose counter was being read (a start after
            // a kill brings up the one the kill already counted).
            if let Action::Kill(Component::Control { mesh })
            | Action::Restart(Component::Control { mesh }) = &step.action
            {
                *restarts
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .entry(mesh.clone())
                    .or_default() += 1;
            }
            phase.clone_from(&step.label);
            next += 1;
            continue;
        }
        if Instant::now() >= end {
            break;
        }
        if Instant::now() >= tick_at {
            (opts.say)(&progress(&samples, f64::from(tick) * 1000.0, &phase));
            tick += 1;
        }
    }
    load.await.context("the load generator")?;
    // The watcher runs until stopped here (or ends at once with nothing to watch); a panic
    // in it would leave its expectations unmet for no reason the report could give.
    if watcher.is_finished() {
        watcher.await.context("the status watcher")?;
    } else {
        watcher.abort();
    }
    let reached = reached
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let samples = load::lock(&samples).clone();
    let mut report = report::analyse(plan, &samples, &reached, started_at);
    // Whatever the timeline did, every component it did not leave stopped still runs: none
    // exited by itself (a crash, a crash loop after restarts, a store it could not open).
    let exited = lab.exited();
    report.checks.push(report::Check {
        expectation: "every component runs at the end".into(),
        passed: exited.is_empty(),
        detail: if exited.is_empty() {
            "none exited by itself".into()
        } else {
            format!(
                "exited: {}; logs in {}",
                exited.join(", "),
                lab.work.join("logs").display()
            )
        },
    });
    report.passed = report.checks.iter().all(|c| c.passed);
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("creating {}", opts.out.display()))?;
    let json = opts.out.join(format!("{}.json", plan.name));
    let html = opts.out.join(format!("{}.html", plan.name));
    let mut j = serde_json::to_value(&report)?;
    j["samples"] = serde_json::to_value(&samples)?;
    std::fs::write(&json, serde_json::to_string_pretty(&j)?)?;
    std::fs::write(&html, report::html(&report))?;
    drop(lab);
    Ok(Outcome { report, json, html })
}
