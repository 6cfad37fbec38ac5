//! Failures that used to pass silently: a state built for a pid that cannot be identified
//! (its liveness would be unknown forever), and an entry read with another config type.

mod common;

use common::events::Recorder;
use common::{aid, run_dir};
use runstate::{AsyncStore, CorruptKind, Error, InstanceId, State};
use tracing::Level;

/// A pid above the kernel's limit: no process has it.
const NO_SUCH_PID: u32 = 1 << 30;

#[test]
fn state_new_warns_when_the_pid_cannot_be_identified() {
    let recorder = Recorder::default();
    let id = InstanceId::random();
    let (state, mine) = tracing::subscriber::with_default(recorder.clone(), || {
        let state = State::new(id, NO_SUCH_PID, ());
        let mine = State::new(InstanceId::random(), std::process::id(), ());
        (state, mine)
    });
    assert_eq!(state.process, None);
    assert!(mine.process.is_some());
    let seen = recorder.seen();
    assert_eq!(
        seen.len(),
        1,
        "one warning, for the unidentified pid alone: {seen:?}"
    );
    let (level, text) = (seen[0].level, seen[0].text());
    assert_eq!(level, Level::WARN);
    assert!(text.contains("cannot identify the process"), "{text}");
    assert!(text.contains(&format!("pid={NO_SUCH_PID}")), "{text}");
    assert!(text.contains(&id.to_string()), "{text}");
}

#[test]
fn state_try_new_returns_the_failure() {
    let mine = State::try_new(InstanceId::random(), std::process::id(), 5u8).unwrap();
    assert!(mine.process.is_some());
    assert_eq!(mine.config, 5);
    match State::try_new(InstanceId::random(), NO_SUCH_PID, ()) {
        Err(Error::Io { op, path, source }) => {
            assert_eq!(op, "identify");
            assert_eq!(path, std::path::Path::new(&format!("/proc/{NO_SUCH_PID}")));
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected an identify error, got {other:?}"),
    }
}

#[test]
fn a_config_of_another_type_says_so() {
    common::run_current_thread(async {
        let dir = run_dir();
        let id = InstanceId::random();
        let written = AsyncStore::<String>::new(dir.path());
        let state = State::unidentified(id, common::pid(1), "hello".to_string());
        written.save(aid(3), &state).await.unwrap();
        let read = AsyncStore::<u64>::new(dir.path());
        let err = read.load(aid(3), id).await.unwrap_err();
        let Error::Corrupt {
            kind: CorruptKind::Undecodable(why),
            ..
        } = &err
        else {
            panic!("expected Corrupt, got {err:?}");
        };
        assert!(
            why.starts_with(
                "the entry's config does not decode as u64 (saved with another config type?)"
            ),
            "{why}"
        );
        assert!(err.to_string().contains("does not decode as u64"), "{err}");
    });
}
