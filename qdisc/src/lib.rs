//! The plug tree over pure netlink (see issue #4; not built yet).
