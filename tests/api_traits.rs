//! The traits the public types promise: futures that can be spawned, handles that can be
//! shared, errors that can travel. Most checks are at compile time; the spawns also run.

use futures::TryStreamExt;
use runstate::{
    Aid, AsyncStore, Change, CorruptKind, Cursor, Error, InstanceId, Liveness, Options,
    ProcessIdentity, ReadCursor, State, Watch,
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
    value::<Change>();
    send_sync::<Watch>();
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

#[test]
fn display_honours_width_and_alignment() {
    assert_eq!(format!("{:<7}|", Liveness::Alive), "alive  |");
    assert_eq!(format!("{:>8}", Liveness::Dead), "    dead");
    assert_eq!(format!("{:^9}", Liveness::Unknown), " unknown ");
    let id = InstanceId::from_bytes([0xab; 16]);
    assert_eq!(format!("{id:>34}"), format!("  {id}"));
    assert_eq!(format!("{id:-<33}"), format!("{id}-"));
    assert_eq!(format!("{:>5}", Aid::new(7).unwrap()), "    7");
}

#[test]
fn conversions_where_users_look_for_them() {
    let aid = Aid::new(42).unwrap();
    assert_eq!(Aid::try_from(42u16).unwrap(), aid);
    assert_eq!(Aid::try_from(42u32).unwrap(), aid);
    assert_eq!(Aid::try_from(42u64).unwrap(), aid);
    assert_eq!(Aid::try_from(42usize).unwrap(), aid);
    assert_eq!(Aid::try_from(42i32).unwrap(), aid);
    assert_eq!(Aid::try_from(42i64).unwrap(), aid);
    assert_eq!(Aid::try_from("42").unwrap(), aid);
    assert_eq!(u16::from(aid), 42);
    assert_eq!(Aid::try_from(9999u32).unwrap(), Aid::MAX);
    for bad in [
        Aid::try_from(10_000u32),
        Aid::try_from(65_536u32 + 42),
        Aid::try_from(-1i32),
        Aid::try_from(i64::MIN),
        Aid::try_from(usize::MAX),
        Aid::try_from("042"),
        Aid::try_from(" 42"),
    ] {
        assert!(matches!(bad, Err(Error::InvalidAid { .. })), "{bad:?}");
    }
    assert!(
        Aid::try_from(65_536u32 + 42)
            .unwrap_err()
            .to_string()
            .contains("65578")
    );

    let id = InstanceId::from([0x5a; 16]);
    assert_eq!(InstanceId::try_from(id.to_string().as_str()).unwrap(), id);
    assert!(matches!(
        InstanceId::try_from("5A5A"),
        Err(Error::InvalidInstanceId { .. })
    ));
    assert_eq!(<[u8; 16]>::from(id), [0x5a; 16]);
    let bytes: &[u8] = id.as_ref();
    assert_eq!(bytes, &[0x5a; 16]);
}

#[test]
fn liveness_travels_through_serde_as_its_text_form() {
    for l in [Liveness::Alive, Liveness::Dead, Liveness::Unknown] {
        let json = serde_json::to_string(&l).unwrap();
        assert_eq!(json, format!("\"{l}\""));
        assert_eq!(serde_json::from_str::<Liveness>(&json).unwrap(), l);
    }
    assert!(serde_json::from_str::<Liveness>("\"Alive\"").is_err());
}
