//! The traits the public types promise: futures that can be spawned, handles that can be
//! shared, errors that can travel. Most checks are at compile time; the spawns also run.

use futures::TryStreamExt;
use runstate::{
    Aid, AsyncStore, CorruptKind, Cursor, Error, InstanceId, Liveness, Options, ProcessIdentity,
    ReadCursor, State,
};

fn send_sync<T: Send + Sync>() {}
fn send<T: Send>() {}
fn error<T: std::error::Error + Send + Sync + 'static>() {}
fn value<T: Clone + std::fmt::Debug + PartialEq + Eq + std::hash::Hash>() {}

#[test]
fn public_types_have_the_common_traits() {
    send_sync::<AsyncStore<Vec<String>>>();
    send_sync::<Cursor<Vec<String>>>();
    send_sync::<ReadCursor<Vec<String>>>();
    send_sync::<State<Vec<String>>>();
    error::<Error>();
    value::<Aid>();
    value::<InstanceId>();
    value::<Liveness>();
    value::<ProcessIdentity>();
    value::<Options>();
    value::<CorruptKind>();
    value::<State<String>>();
    let store = AsyncStore::<String>::new("/nonexistent");
    let _clone: AsyncStore<String> = store.clone();
    assert!(format!("{store:?}").contains("/nonexistent"));
}

#[test]
fn aids_travel_through_serde_checked() {
    let aid = Aid::new(42).unwrap();
    assert_eq!(serde_json::to_string(&aid).unwrap(), "42");
    assert_eq!(serde_json::from_str::<Aid>("42").unwrap(), aid);
    assert!(serde_json::from_str::<Aid>("10000").is_err());
    assert!(serde_json::from_str::<Aid>("-1").is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn futures_and_streams_are_send() {
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let store = AsyncStore::<String>::new(dir.path());
    let s2 = store.clone();
    let h = tokio::spawn(async move {
        s2.with_aid(Aid::new(1).unwrap(), async |c| {
            c.save(&State::new(InstanceId::random(), 1, "x".into()))
                .await?;
            let v: Vec<_> = c.entries().try_collect().await?;
            let ids: Vec<_> = c.ids().try_collect().await?;
            Ok::<_, Error>((v.len(), ids.len()))
        })
        .await
    });
    assert_eq!(h.await.unwrap().unwrap(), (1, 1));
    let s3 = store.clone();
    let shared = tokio::spawn(async move {
        s3.with_aid_shared(Aid::new(1).unwrap(), async |c| c.load_all().await)
            .await
    });
    assert_eq!(shared.await.unwrap().unwrap().len(), 1);
    let s4 = store.clone();
    let listed = tokio::spawn(async move { s4.entries().try_collect::<Vec<_>>().await });
    assert_eq!(listed.await.unwrap().unwrap().len(), 1);
    send::<Error>();
}

/// The cursor methods the API pins, named by path (not only callable through `Deref`).
#[test]
fn cursor_methods_are_inherent() {
    type C = Vec<String>;
    let _ = (
        Cursor::<C>::aid,
        Cursor::<C>::save,
        Cursor::<C>::destroy,
        Cursor::<C>::load,
    );
    let _ = (
        Cursor::<C>::len,
        Cursor::<C>::ids,
        Cursor::<C>::entries,
        Cursor::<C>::load_all,
    );
    let _ = (Cursor::<C>::prune_dead, Cursor::<C>::is_empty);
    let _ = (
        ReadCursor::<C>::aid,
        ReadCursor::<C>::load,
        ReadCursor::<C>::len,
    );
    let _ = (
        ReadCursor::<C>::ids,
        ReadCursor::<C>::entries,
        ReadCursor::<C>::load_all,
    );
}
