//! Sessions: reach by construction, transactions with savepoints, and the event catalog.

use std::time::Duration;

use sea_orm::{ConnectionTrait, Statement};
use uuid::Uuid;
use vega_entity::{DismissReason, RevokeReason, Severity, TriggerKind, UserStatus};
use vega_repository::{
    Action, Dismissal, Error, EventFeed, Lease, NewApiKey, NewProject, NewRepository, NewScan,
    NewSnapshot, Principal, ScanObject, Store, WorkerBeat,
};
use vega_tests::on_both_backends;

use crate::common;

const LEASE: Duration = Duration::from_secs(60);

/// Every event's action, oldest first.
async fn actions(store: &Store) -> Vec<String> {
    let conn = store.connection();
    let rows = conn
        .query_all_raw(Statement::from_string(
            conn.get_database_backend(),
            "SELECT action FROM events ORDER BY id",
        ))
        .await
        .unwrap();
    rows.iter()
        .map(|r| r.try_get("", "action").unwrap())
        .collect()
}

/// How many rows `table` holds.
async fn rows(store: &Store, table: &str) -> i64 {
    let conn = store.connection();
    let row = conn
        .query_one_raw(Statement::from_string(
            conn.get_database_backend(),
            format!("SELECT COUNT(*) AS n FROM {table}"),
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get("", "n").unwrap()
}

/// A key for `user`, authenticated into its principal.
async fn principal(store: &Store, user: Uuid, project: Option<Uuid>) -> (Principal, String) {
    let issued = store
        .api_keys()
        .issue(NewApiKey {
            user_id: user,
            project_id: project,
            name: "key".into(),
            scopes: vec!["projects:write".into()],
            expires_at: None,
        })
        .await
        .unwrap();
    let token = issued.token.expose().to_owned();
    let principal = store
        .api_keys()
        .authenticate(&token)
        .await
        .unwrap()
        .unwrap();
    (principal, token)
}

async fn worker(store: &Store, name: &str) -> Principal {
    let issued = store.workers().issue_credential(name).await.unwrap();
    store
        .api_keys()
        .authenticate(issued.token.expose())
        .await
        .unwrap()
        .unwrap()
}

fn hosted(project_id: Uuid, xid: &str) -> NewRepository {
    NewRepository {
        project_id,
        provider: vega_entity::Provider::Github,
        provider_xid: Some(xid.into()),
        full_name: Some(format!("acme/{xid}")),
        clone_url: None,
        default_branch: Some("main".into()),
    }
}

fn not_found<T: std::fmt::Debug>(result: Result<T, Error>) {
    assert!(
        matches!(result, Err(Error::NotFound { .. })),
        "expected NotFound, got {result:?}"
    );
}

on_both_backends! {
    async fn no_principal_reaches_another_tenant(db: &TestDb) {
        let store = common::store(db).await;
        let ada = common::user(&store).await;
        let bob = common::user(&store).await;
        let ada_web = common::project(&store, &ada, "web").await;
        let ada_api = common::project(&store, &ada, "api").await;
        let bob_web = common::project(&store, &bob, "web").await;
        let bob_repo = store.repositories().add(hosted(bob_web.id, "b")).await.unwrap();
        let api_repo = store.repositories().add(hosted(ada_api.id, "a")).await.unwrap();
        let bob_scan = store
            .scans()
            .enqueue(NewScan::full(bob_repo.id, TriggerKind::Api, Some("main".into())))
            .await
            .unwrap();
        let (bob_key, _) = principal(&store, bob.id, None).await;
        let bob_key_id = bob_key.key_id().unwrap();
        // Bob's history: a completed scan with a finding and a report, and a snapshot.
        let done = store.scans().enqueue(NewScan::full(bob_repo.id, TriggerKind::Api, Some("main".into()))).await.unwrap();
        let claim = store.scans().claim_next("sys", 1, LEASE).await.unwrap().into_iter().find(|c| c.scan.id == done.id || c.scan.id == bob_scan.id).unwrap();
        store.scans().complete(&claim.lease, vec![common::finding("r", "a.py", Severity::High)]).await.unwrap();
        let bob_scan = if claim.scan.id == bob_scan.id { done } else { bob_scan };
        let bob_finding = store.findings().list_open(bob_web.id, None, 1).await.unwrap().items.pop().unwrap();
        let report = store.artifacts().store_scan_object(claim.scan.id, ScanObject::Report, &b"{}"[..]).await.unwrap();
        let bob_snapshot = store.snapshots().create(NewSnapshot { repository_id: bob_repo.id, commit_sha: None, ref_name: None, expires_at: None }).await.unwrap();

        let (user, _) = principal(&store, ada.id, None).await;
        let (web_key, _) = principal(&store, ada.id, Some(ada_web.id)).await;
        let idle_worker = worker(&store, "idle").await;
        let events_before = actions(&store).await.len();
        let rows_before = (rows(&store, "projects").await, rows(&store, "scans").await);

        for who in [&user, &web_key, &idle_worker] {
            let session = store.session(who);
            not_found(session.projects().get(bob_web.id).await);
            let archived = session.projects().archive(bob_web.id).await;
            assert!(matches!(archived, Err(Error::NotFound { .. } | Error::Forbidden { .. })), "{archived:?}");
            not_found(session.repositories().get(bob_repo.id).await);
            not_found(session.scans().get(bob_scan.id).await);
            assert!(session.scans().history(bob_web.id, None, 10).await.unwrap().items.is_empty());
            assert!(session.projects().list_for_owner(bob.id, None, 10).await.unwrap().items.is_empty());
            assert!(session.events().page(EventFeed::Project(bob_web.id), None, 10).await.unwrap().items.is_empty());
            assert!(session.repositories().list_for_project(bob_web.id).await.unwrap().is_empty());
            not_found(session.snapshots().create(NewSnapshot { repository_id: bob_repo.id, commit_sha: None, ref_name: None, expires_at: None }).await);
            not_found(session.api_keys().get(bob_key_id).await);
            not_found(session.users().get(bob.id).await);
            not_found(session.projects().get_by_slug(bob.id, "web").await);
            not_found(session.findings().get(bob_finding.id).await);
            assert!(session.findings().list_open(bob_web.id, None, 10).await.unwrap().items.is_empty());
            assert_eq!(session.findings().open_counts(bob_web.id).await.unwrap().total(), 0);
            assert!(session.findings().of_scan(claim.scan.id, None, 10).await.unwrap().items.is_empty());
            not_found(session.snapshots().get(bob_snapshot.id).await);
            not_found(session.artifacts().get(report.id).await);
            assert!(matches!(session.artifacts().open(report.id).await, Err(Error::NotFound { .. })));
            assert!(session.artifacts().list_for_scan(claim.scan.id).await.unwrap().is_empty());
            assert!(session.api_keys().list_for_user(bob.id).await.unwrap().is_empty());
            assert!(session.events().page(EventFeed::Actor(bob.id), None, 10).await.unwrap().items.is_empty());
            assert!(session.events().page(EventFeed::Subject("scan".into(), claim.scan.id), None, 10).await.unwrap().items.is_empty());
        }
        for who in [&user, &web_key] {
            let session = store.session(who);
            not_found(session.repositories().add(hosted(bob_web.id, "x")).await);
            not_found(session.scans().enqueue(NewScan::full(bob_repo.id, TriggerKind::Api, None)).await);
            not_found(session.projects().delete(bob_web.id).await);
            not_found(session.scans().delete(bob_scan.id).await);
            not_found(session.api_keys().revoke(bob_key_id, RevokeReason::User).await);
            not_found(session.api_keys().rotate(bob_key_id).await);
            not_found(session.findings().dismiss(bob_finding.id, Dismissal::because(DismissReason::FalsePositive)).await);
            not_found(session.findings().reopen(bob_finding.id).await);
            let note = vega_repository::NewEvent { action: "note".into(), project_id: Some(bob_web.id), subject: None, request_id: None, ip_address: None, data: serde_json::json!({}) };
            not_found(session.events().append(note).await);
            not_found(session.snapshots().delete(bob_snapshot.id).await);
            not_found(session.api_keys().issue(NewApiKey { user_id: bob.id, project_id: None, name: "x".into(), scopes: vec![], expires_at: None }).await);
            assert!(matches!(session.scans().cancel(bob_scan.id).await, Err(Error::NotFound { .. })));
            let claim = session.scans().claim_next("w", 1, LEASE).await;
            assert!(matches!(claim, Err(Error::Forbidden { .. })), "{claim:?}");
        }
        // A project key reaches its project only, and cannot make projects or keys.
        let web = store.session(&web_key);
        let listed = web.projects().list_for_owner(ada.id, None, 10).await.unwrap();
        assert_eq!(listed.items.iter().map(|p| p.id).collect::<Vec<_>>(), vec![ada_web.id]);
        not_found(web.projects().get(ada_api.id).await);
        not_found(web.scans().enqueue(NewScan::full(api_repo.id, TriggerKind::Api, None)).await);
        not_found(web.projects().create(NewProject { owner_id: ada.id, name: "New".into(), slug: "new".into(), description: None }).await);
        // A user cannot create projects for someone else.
        not_found(store.session(&user).projects().create(NewProject { owner_id: bob.id, name: "Mine".into(), slug: "mine".into(), description: None }).await);
        // A worker with no lease cannot write to a scan, whatever lease it presents.
        let forged = Lease { scan_id: bob_scan.id, worker_id: "idle".into(), attempt: 1 };
        let lost = store.session(&idle_worker).scans().complete(&forged, vec![]).await;
        assert!(matches!(lost, Err(Error::LeaseLost { .. })), "{lost:?}");

        assert_eq!(actions(&store).await.len(), events_before, "nothing out of reach wrote an event");
        // Bob himself reaches all of it, through the same statements.
        let own = store.session(&bob_key);
        let note = vega_repository::NewEvent { action: "note".into(), project_id: Some(bob_web.id), subject: None, request_id: None, ip_address: None, data: serde_json::json!({}) };
        assert_eq!(own.events().append(note).await.unwrap().actor_label, bob_key.label());
        assert_eq!(own.findings().of_scan(claim.scan.id, None, 10).await.unwrap().items.len(), 1);
        assert_eq!(own.findings().open_counts(bob_web.id).await.unwrap().high, 1);
        assert_eq!(own.findings().list_open(bob_web.id, None, 10).await.unwrap().items.len(), 1);
        assert_eq!(own.findings().get(bob_finding.id).await.unwrap().id, bob_finding.id);
        assert_eq!(own.artifacts().list_for_scan(claim.scan.id).await.unwrap().len(), 1);
        assert_eq!(own.snapshots().get(bob_snapshot.id).await.unwrap().id, bob_snapshot.id);
        assert!(!own.events().page(EventFeed::Project(bob_web.id), None, 10).await.unwrap().items.is_empty());
        assert_eq!(own.projects().list_for_owner(bob.id, None, 10).await.unwrap().items.len(), 1);
        assert_eq!((rows(&store, "projects").await, rows(&store, "scans").await), rows_before);
        assert_eq!(store.scans().get(bob_scan.id).await.unwrap().status, "queued");
    }

    async fn suspended_users_and_revoked_keys_do_not_authenticate(db: &TestDb) {
        let store = common::store(db).await;
        let ada = common::user(&store).await;
        let (_, token) = principal(&store, ada.id, None).await;
        let (revoked, revoked_token) = principal(&store, ada.id, None).await;
        store.api_keys().revoke(revoked.key_id().unwrap(), RevokeReason::User).await.unwrap();
        assert_eq!(store.api_keys().authenticate(&revoked_token).await.unwrap(), None);
        store.users().set_status(ada.id, UserStatus::Suspended).await.unwrap();
        assert_eq!(store.api_keys().authenticate(&token).await.unwrap(), None);
        not_found(store.users().principal(ada.id).await);
        store.users().set_status(ada.id, UserStatus::Active).await.unwrap();
        assert!(store.api_keys().authenticate(&token).await.unwrap().is_some());
        assert!(store.users().principal(ada.id).await.is_ok());
        let credential = store.workers().issue_credential("w").await.unwrap();
        store.workers().revoke_credential(credential.credential.id).await.unwrap();
        assert_eq!(store.api_keys().authenticate(credential.token.expose()).await.unwrap(), None);
        assert_eq!(store.api_keys().authenticate("vgk_nonsense").await.unwrap(), None);
    }

    async fn the_touch_records_when_and_where(db: &TestDb) {
        let store = common::store(db).await;
        let ada = common::user(&store).await;
        let (key, token) = principal(&store, ada.id, None).await;
        assert!(store.api_keys().touch(&key, Some("192.0.2.7")).await.unwrap());
        let stored = store.api_keys().get(key.key_id().unwrap()).await.unwrap();
        assert_eq!(stored.last_used_ip.as_deref(), Some("192.0.2.7"));
        let again = store.api_keys().authenticate(&token).await.unwrap().unwrap();
        assert!(!store.api_keys().touch(&again, Some("192.0.2.8")).await.unwrap(), "throttled");
        let w = worker(&store, "w").await;
        assert!(store.api_keys().touch(&w, Some("192.0.2.9")).await.unwrap());
    }

    async fn workers_hold_their_own_leases_only(db: &TestDb) {
        let store = common::store(db).await;
        let repo = common::repository(&store).await;
        let scan = store.scans().enqueue(NewScan::full(repo.id, TriggerKind::Api, Some("main".into()))).await.unwrap();
        let one = worker(&store, "one").await;
        let two = worker(&store, "two").await;
        let refused = store.session(&one).scans().claim_next("two", 1, LEASE).await;
        assert!(matches!(refused, Err(Error::Invalid { ref field, .. }) if field == "worker_id"), "{refused:?}");
        let claim = store.session(&one).scans().claim_next("one", 1, LEASE).await.unwrap().pop().unwrap();
        assert_eq!(claim.scan.id, scan.id);
        // The holder reaches the scan and its project; the other worker does not.
        assert!(store.session(&one).scans().get(scan.id).await.is_ok());
        assert!(store.session(&one).projects().get(repo.project_id).await.is_ok());
        not_found(store.session(&two).scans().get(scan.id).await);
        let stolen = Lease { worker_id: "two".into(), ..claim.lease.clone() };
        for lease in [&claim.lease, &stolen] {
            let hb = store.session(&two).scans().heartbeat(lease, LEASE).await;
            assert!(matches!(hb, Err(Error::LeaseLost { .. })), "{hb:?}");
            let done = store.session(&two).scans().complete(lease, vec![]).await;
            assert!(matches!(done, Err(Error::LeaseLost { .. })), "{done:?}");
            let failed = store.session(&two).scans().fail(lease, "boom", "no").await;
            assert!(matches!(failed, Err(Error::LeaseLost { .. })), "{failed:?}");
        }
        let beat = WorkerBeat { worker_id: "two/host".into(), hostname: None, version: None, capacity: 1 };
        assert!(matches!(store.session(&one).workers().heartbeat(beat.clone()).await, Err(Error::Invalid { .. })));
        store.session(&two).workers().heartbeat(beat).await.unwrap();
        let done = store.session(&one).scans().complete(&claim.lease, vec![common::finding("r", "a.py", Severity::High)]).await.unwrap();
        assert_eq!(done.status, "succeeded");
        // Once finished, the scan leaves the worker's reach.
        not_found(store.session(&one).scans().get(scan.id).await);
    }

    async fn a_failed_step_rolls_back_the_whole_transaction(db: &TestDb) {
        let store = common::store(db).await;
        let ada = common::user(&store).await;
        let (user, _) = principal(&store, ada.id, None).await;
        let session = store.session(&user);
        let before = actions(&store).await.len();
        let new = |slug: &str| NewProject { owner_id: ada.id, name: "P".into(), slug: slug.into(), description: None };

        // Begin/commit: the second create collides, so the commit refuses to keep the first.
        let tx = session.begin().await.unwrap();
        tx.projects().create(new("one")).await.unwrap();
        assert!(matches!(tx.projects().create(new("one")).await, Err(Error::Conflict { .. })));
        assert!(matches!(tx.commit().await, Err(Error::Aborted)));
        not_found(session.projects().get_by_slug(ada.id, "one").await);

        // The closure form: an error returned rolls back.
        let result: Result<(), Error> = session
            .transaction(|tx| Box::pin(async move {
                let p = tx.projects().create(new("two")).await?;
                tx.repositories().add(hosted(p.id, "r")).await?;
                Err(Error::Invalid { field: "test".into(), reason: "stop here".into() })
            }))
            .await;
        assert!(matches!(result, Err(Error::Invalid { .. })));
        not_found(session.projects().get_by_slug(ada.id, "two").await);
        assert_eq!(actions(&store).await.len(), before, "no event of rolled-back work");

        // A failed savepoint rolls back to itself only.
        let tx = session.begin().await.unwrap();
        let kept = tx.projects().create(new("three")).await.unwrap();
        let inner: Result<(), Error> = tx
            .transaction(|sp| Box::pin(async move {
                sp.projects().create(new("four")).await?;
                sp.projects().create(new("three")).await?;
                Ok(())
            }))
            .await;
        assert!(matches!(inner, Err(Error::Conflict { .. })), "{inner:?}");
        tx.repositories().add(hosted(kept.id, "k")).await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(session.projects().get_by_slug(ada.id, "three").await.unwrap().id, kept.id);
        not_found(session.projects().get_by_slug(ada.id, "four").await);
        assert_eq!(
            actions(&store).await[before..],
            ["project.created", "repository.added"],
        );

        // A panic inside the work rolls back too.
        let session_store = store.clone();
        let user_clone = user.clone();
        let panicked = tokio::spawn(async move {
            let session = session_store.session(&user_clone);
            let _: Result<(), Error> = session
                .transaction(|tx| Box::pin(async move {
                    tx.projects().create(NewProject { owner_id: ada.id, name: "P".into(), slug: "five".into(), description: None }).await?;
                    panic!("the handler panicked");
                }))
                .await;
        })
        .await;
        assert!(panicked.is_err());
        not_found(session.projects().get_by_slug(ada.id, "five").await);
    }

    async fn every_state_change_writes_its_catalogued_event(db: &TestDb) {
        let store = common::store(db).await;
        let mut seen = std::collections::HashSet::new();
        macro_rules! expect {
            ($action:expr, $call:expr) => {{
                let before = actions(&store).await.len();
                let value = $call;
                let all = actions(&store).await;
                assert_eq!(all[before..], [$action.as_str()], "after {}", stringify!($call));
                seen.insert($action);
                value
            }};
        }
        let ada = expect!(Action::UserCreated, common::user(&store).await);
        expect!(Action::UserStatusChanged, store.users().set_status(ada.id, UserStatus::Active).await.unwrap());
        let project = expect!(Action::ProjectCreated, common::project(&store, &ada, "web").await);
        expect!(Action::ProjectArchived, store.projects().archive(project.id).await.unwrap());
        let repo = expect!(Action::RepositoryAdded, store.repositories().add(hosted(project.id, "w")).await.unwrap());
        let key = expect!(Action::ApiKeyIssued, store.api_keys().issue(NewApiKey { user_id: ada.id, project_id: None, name: "k".into(), scopes: vec![], expires_at: None }).await.unwrap());
        expect!(Action::ApiKeyRevoked, store.api_keys().revoke(key.key.id, RevokeReason::User).await.unwrap());
        let credential = expect!(Action::WorkerCredentialIssued, store.workers().issue_credential("w").await.unwrap());
        let w = store.api_keys().authenticate(credential.token.expose()).await.unwrap().unwrap();
        let snapshot = expect!(Action::SnapshotCreated, store.snapshots().create(NewSnapshot { repository_id: repo.id, commit_sha: None, ref_name: None, expires_at: None }).await.unwrap());
        expect!(Action::ArtifactStored, store.artifacts().store_snapshot_archive(snapshot.id, &b"tar"[..], Some(1)).await.unwrap());
        expect!(Action::SnapshotDeleted, store.snapshots().delete(snapshot.id).await.unwrap());
        let enqueue = || NewScan::full(repo.id, TriggerKind::Api, Some("main".into()));
        let scans = store.session(&w);
        // Claimed and completed.
        expect!(Action::ScanEnqueued, store.scans().enqueue(enqueue()).await.unwrap());
        let claim = expect!(Action::ScanClaimed, scans.scans().claim_next("w", 1, LEASE).await.unwrap().pop().unwrap());
        let finding = vec![common::finding("r", "a.py", Severity::High)];
        expect!(Action::ScanCompleted, scans.scans().complete(&claim.lease, finding).await.unwrap());
        let found = store.findings().list_open(project.id, None, 10).await.unwrap().items.pop().unwrap();
        expect!(Action::FindingDismissed, store.findings().dismiss(found.id, Dismissal::because(DismissReason::FalsePositive)).await.unwrap());
        expect!(Action::FindingReopened, store.findings().reopen(found.id).await.unwrap());
        expect!(Action::FindingConfirmed, store.findings().confirm(found.id).await.unwrap());
        expect!(Action::FindingSeverityOverridden, store.findings().override_severity(found.id, Severity::Low, "internal only").await.unwrap());
        expect!(Action::FindingSeverityRestored, store.findings().clear_severity_override(found.id).await.unwrap());
        let until = chrono::Utc::now().fixed_offset() + chrono::Duration::milliseconds(50);
        let lapsing = Dismissal { until: Some(until), ..Dismissal::because(DismissReason::AcceptedRisk) };
        expect!(Action::FindingDismissed, store.findings().dismiss(found.id, lapsing).await.unwrap());
        tokio::time::sleep(Duration::from_millis(80)).await;
        expect!(Action::FindingDismissalExpired, assert_eq!(store.findings().expire_dismissals(100).await.unwrap(), 1));
        expect!(Action::ProjectSlaChanged, store.projects().set_sla(project.id, vega_repository::SlaPolicy { high: Some(3), ..Default::default() }).await.unwrap());
        expect!(Action::ArtifactStored, store.artifacts().store_scan_object(claim.scan.id, ScanObject::Report, &b"{}"[..]).await.unwrap());
        expect!(Action::ScanDeleted, store.scans().delete(claim.scan.id).await.unwrap());
        // Failed.
        store.scans().enqueue(enqueue()).await.unwrap();
        let claim = scans.scans().claim_next("w", 1, LEASE).await.unwrap().pop().unwrap();
        expect!(Action::ScanFailed, scans.scans().fail(&claim.lease, "boom", "it broke").await.unwrap());
        let retried = expect!(Action::ScanRetried, store.scans().retry(claim.scan.id).await.unwrap());
        assert_eq!((retried.status.as_str(), retried.attempt, retried.max_attempts), ("queued", 1, 1 + vega_repository::RETRY_ATTEMPTS));
        let again = store.scans().retry(claim.scan.id).await;
        assert!(matches!(again, Err(Error::Conflict { .. })), "a queued scan is not retried: {again:?}");
        store.scans().cancel(claim.scan.id).await.unwrap();
        // Canceled while queued; cancel requested while running, then acknowledged.
        let queued = store.scans().enqueue(enqueue()).await.unwrap();
        expect!(Action::ScanCanceled, store.scans().cancel(queued.id).await.unwrap());
        store.scans().enqueue(enqueue()).await.unwrap();
        let claim = scans.scans().claim_next("w", 1, LEASE).await.unwrap().pop().unwrap();
        expect!(Action::ScanCancelRequested, store.scans().cancel(claim.scan.id).await.unwrap());
        expect!(Action::ScanCanceled, scans.scans().acknowledge_cancel(&claim.lease).await.unwrap());
        // Rescued after its lease expired.
        store.scans().enqueue(enqueue()).await.unwrap();
        scans.scans().claim_next("w", 1, Duration::from_millis(1)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let rescued = expect!(Action::ScanRescued, store.scans().rescue_expired(Duration::ZERO).await.unwrap());
        assert_eq!(rescued.len(), 1);
        expect!(Action::WorkerCredentialRevoked, store.workers().revoke_credential(credential.credential.id).await.unwrap());
        expect!(Action::ProjectDeleted, store.projects().delete(project.id).await.unwrap());
        let missing: Vec<_> = Action::ALL.iter().filter(|a| !seen.contains(*a)).collect();
        assert!(missing.is_empty(), "catalog entries no test wrote: {missing:?}");
        // The actor is the principal that acted.
        let page = store.events().page(EventFeed::Subject("scan".into(), claim.scan.id), None, 50).await.unwrap();
        let claimed = page.items.iter().find(|e| e.action == "scan.claimed").unwrap();
        assert_eq!((claimed.actor_type.as_str(), claimed.actor_label.as_str()), ("worker", "w"));
    }
}
