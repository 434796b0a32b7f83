//! compilerd library.
