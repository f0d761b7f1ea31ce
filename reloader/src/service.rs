//! What the reloader tells its own supervisor (systemd's `Type=notify` and
//! `Type=notify-reload`), through the sd-notify crate, when `NOTIFY_SOCKET`
//! is set in its environment: `READY=1` once the first generation is
//! healthy; around each reload `RELOADING=1` with `MONOTONIC_USEC=`, then
//! `READY=1` (a rolled-back reload too: the service is ready, on the old
//! generation) with a `STATUS=` naming the outcome; `STOPPING=1` at exit.
//! Nothing is sent without `NOTIFY_SOCKET`; a failed send is logged, never
//! fatal (the service keeps serving).

use sd_notify::NotifyState;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        crate::logging::log(&format!("warning: NOTIFY_SOCKET: {e}"));
    }
}

pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}
