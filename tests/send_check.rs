use futures::TryStreamExt;
use runstate::{Aid, AsyncStore, Error, InstanceId, State};

#[tokio::test(flavor = "multi_thread")]
async fn futures_are_send() {
    let dir = tempfile::tempdir().unwrap();
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
    let n =
        tokio::spawn(async move { s3.entries().try_collect::<Vec<_>>().await.map(|v| v.len()) })
            .await
            .unwrap()
            .unwrap();
    assert_eq!(n, 1);
}
