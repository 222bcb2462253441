//! Leader leases on both engines: one holder at a time, renewal, takeover after expiry, release.

use std::time::Duration;

use vega_repository::Error;
use vega_tests::on_both_backends;

use crate::common;

on_both_backends! {
    async fn one_holder_at_a_time_until_it_expires_or_lets_go(db: &TestDb) {
        let store = common::store(db).await;
        let leases = store.leader_leases();
        let short = Duration::from_millis(300);
        assert!(leases.hold("maintain", "a", short).await.unwrap());
        assert!(!leases.hold("maintain", "b", short).await.unwrap(), "a holds it");
        assert!(leases.hold("maintain", "a", short).await.unwrap(), "a renews");
        assert_eq!(leases.holder("maintain").await.unwrap().as_deref(), Some("a"));
        assert!(leases.hold("other-job", "b", short).await.unwrap(), "leases are per job");

        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(leases.holder("maintain").await.unwrap(), None, "expired");
        assert!(leases.hold("maintain", "b", short).await.unwrap(), "b takes over");
        assert!(!leases.hold("maintain", "a", short).await.unwrap());

        leases.release("maintain", "a").await.unwrap();
        assert_eq!(leases.holder("maintain").await.unwrap().as_deref(), Some("b"), "only the holder releases");
        leases.release("maintain", "b").await.unwrap();
        assert!(leases.hold("maintain", "a", short).await.unwrap(), "released: taken at once");

        assert!(matches!(leases.hold("maintain", "a", Duration::ZERO).await, Err(Error::Invalid { .. })));
        let user = common::user(&store).await;
        let principal = store.users().principal(user.id).await.unwrap();
        let err = store.session(&principal).leader_leases().hold("maintain", "u", short).await.unwrap_err();
        assert!(matches!(err, Error::Forbidden { .. }), "{err:?}");
    }
}
