//! Byte-level tests of [`super`]: every expected byte string is derived by hand from icecream's
//! `services/comm.cpp` (master `fcf8c51`, same layouts at tag `1.4`), as each test's comment
//! shows; none was produced by this encoder.
#![allow(clippy::unwrap_used)]

use super::*;

#[test]
fn handshake_agrees_on_the_lower_version() {
    // `init_channel` writes `{PROTOCOL_VERSION, 0, 0, 0}`: little-endian, so 43 is 2b 00 00 00.
    assert_eq!(PROTOCOL_VERSION.to_le_bytes(), [44, 0, 0, 0]);
    // `update_state`: `remote_prot |= vers[i] << (i * 8)`, capped at our version.
    assert_eq!(negotiate([43, 0, 0, 0]), Ok(43)); // icemon 3.3 on libicecc 1.4
    assert_eq!(negotiate([44, 0, 0, 0]), Ok(44));
    assert_eq!(negotiate([0x2c, 0x01, 0, 0]), Ok(44)); // 300: a future icecream
    // Below 21 or above 1 << 20 icecream itself refuses; below 29 we do (long MON_GET_CS).
    assert_eq!(negotiate([20, 0, 0, 0]), Err(WireError::Version(20)));
    assert_eq!(negotiate([28, 0, 0, 0]), Err(WireError::Version(28)));
    assert_eq!(negotiate([0, 0, 0x20, 0]), Err(WireError::Version(1 << 21)));
    // Big-endian 43 read as little-endian is 0x2b000000: refused, not misread.
    assert!(negotiate([0, 0, 0, 43]).is_err());
    // The second word must repeat the minimum (`if ((int)remote_prot != protocol)`).
    assert_eq!(confirm(43, [43, 0, 0, 0]), Ok(()));
    assert_eq!(confirm(43, [44, 0, 0, 0]), Err(WireError::Agreement { expected: 43, got: 44 }));
}

#[test]
fn mon_login_is_a_bare_type() {
    // `send_msg`: u32 BE length of what follows (4: the type), then `Msg::send_to_channel`'s
    // type, 'R' = 0x52 ('A' = 65 is UNKNOWN, MON_LOGIN is the 18th value).
    let frame = encode(&Message::MonLogin, 43);
    assert_eq!(frame, [0, 0, 0, 4, 0, 0, 0, 0x52]);
    assert_eq!(frame_len([0, 0, 0, 4]), Ok(4));
    assert_eq!(decode(&frame[4..], 43), Ok(Message::MonLogin));
}

#[test]
fn mon_stats_is_hostid_then_a_nul_terminated_string() {
    // `MonStatsMsg::send_to_channel`: type 'W' (0x57), hostid u32 BE, then the string as
    // `operator<<(std::string)`: length 1 + strlen (8 + 1 = 9) and the bytes with their NUL.
    // Length of the frame: 4 (type) + 4 (hostid) + 4 (string length) + 9 = 21 = 0x15.
    let msg = Message::MonStats { host_id: 1, text: "Name:n1\n".into() };
    let expected = [
        0, 0, 0, 0x15, // length
        0, 0, 0, 0x57, // MON_STATS
        0, 0, 0, 1, // hostid
        0, 0, 0, 9, // strlen + NUL
        b'N', b'a', b'm', b'e', b':', b'n', b'1', b'\n', 0,
    ];
    assert_eq!(encode(&msg, 43), expected);
    assert_eq!(decode(&expected[4..], 43), Ok(msg));
    // The offline notice the scheduler sends when a daemon leaves.
    let offline = Message::MonStats { host_id: 2, text: "State:Offline\n".into() };
    let bytes = encode(&offline, 43);
    assert_eq!(&bytes[..16], [0, 0, 0, 27, 0, 0, 0, 0x57, 0, 0, 0, 2, 0, 0, 0, 15]);
    assert_eq!(&bytes[16..], b"State:Offline\n\0");
}

#[test]
fn mon_job_begin_is_job_time_host() {
    // `MonJobBeginMsg::send_to_channel`: 'T' (0x54), job_id, stime, hostid; 16 bytes.
    let msg = Message::MonJobBegin { job_id: 7, stime: 0x0102_0304, host_id: 2 };
    let expected = [0, 0, 0, 16, 0, 0, 0, 0x54, 0, 0, 0, 7, 1, 2, 3, 4, 0, 0, 0, 2];
    assert_eq!(encode(&msg, 43), expected);
    assert_eq!(decode(&expected[4..], 43), Ok(msg));
}

#[test]
fn mon_get_cs_short_form_shortens_the_file_name() {
    // `MonGetCSMsg::send_to_channel` from protocol 29: 'S' (0x53), `shorten_filename(filename)`
    // (the last three path components), lang, job_id, clientid.
    // "b/c/d.c" is 7 bytes, so the string is 00 00 00 08 + 8 bytes; 4+8+4+4+4+4 = 28 = 0x1c.
    let msg = Message::MonGetCs {
        filename: "/a/b/c/d.c".into(),
        lang: lang::CXX,
        job_id: 7,
        client_id: 3,
    };
    let expected = [
        0, 0, 0, 0x1c, 0, 0, 0, 0x53, // length, MON_GET_CS
        0, 0, 0, 8, b'b', b'/', b'c', b'/', b'd', b'.', b'c', 0, // "b/c/d.c"
        0, 0, 0, 1, 0, 0, 0, 7, 0, 0, 0, 3, // C++, job 7, submitter host 3
    ];
    assert_eq!(encode(&msg, 43), expected);
    let back = decode(&expected[4..], 43).unwrap();
    assert!(
        matches!(back, Message::MonGetCs { ref filename, job_id: 7, .. } if filename == "b/c/d.c")
    );
}

#[test]
fn mon_job_done_has_client_count_from_39() {
    // `JobDoneMsg::send_to_channel` under type 'U' (0x55, icecream 1.4's MonJobDoneMsg sets
    // it): job_id, exitcode, real, user, sys, pfaults, in_c, in_u, out_c, out_u, flags, and
    // from 39 client_count. 4 + 12 * 4 = 52 = 0x34 at 43; 4 + 11 * 4 = 48 = 0x30 at 38.
    let done = JobDone { job_id: 7, exitcode: 255, real_ms: 0x0100, ..JobDone::default() };
    let at43 = encode(&Message::MonJobDone(done.clone()), 43);
    let mut expected = vec![0, 0, 0, 0x34, 0, 0, 0, 0x55, 0, 0, 0, 7, 0, 0, 0, 0xff, 0, 0, 1, 0];
    expected.extend([0; 4 * 9]); // user, sys, pfaults, in_c, in_u, out_c, out_u, flags, clients
    assert_eq!(at43, expected);
    assert_eq!(decode(&at43[4..], 43), Ok(Message::MonJobDone(done.clone())));
    let at38 = encode(&Message::MonJobDone(done.clone()), 38);
    assert_eq!(&at38[..4], [0, 0, 0, 0x30]);
    assert_eq!(at38.len(), 52);
    assert_eq!(decode(&at38[4..], 38), Ok(Message::MonJobDone(done)));
}

#[test]
fn strings_lose_nuls_and_stay_bounded() {
    let msg = Message::MonStats { host_id: 1, text: "a\0b".into() };
    assert_eq!(&encode(&msg, 43)[12..], [0, 0, 0, 3, b'a', b'b', 0]);
    let long = Message::MonStats { host_id: 1, text: "é".repeat(MAX_STRING) };
    let bytes = encode(&long, 43);
    assert!(bytes.len() <= 16 + MAX_STRING + 1);
    assert!(decode(&bytes[4..], 43).is_ok());
    assert_eq!(shorten_filename("d.c"), "d.c");
    assert_eq!(shorten_filename("c/d.c"), "c/d.c");
    assert_eq!(shorten_filename("x/a/b/c/d.c"), "b/c/d.c");
}

#[test]
fn hostile_bytes_are_refused() {
    // Frames: at least the type, at most icecream's MAX_MSG_SIZE.
    assert_eq!(frame_len([0, 0, 0, 3]), Err(WireError::FrameLength(3)));
    assert_eq!(frame_len([0, 0x10, 0, 1]), Err(WireError::FrameLength(0x10_0001)));
    assert_eq!(frame_len([0xff; 4]), Err(WireError::FrameLength(u32::MAX)));
    // Truncated fields, a string longer than its frame, a string without its NUL.
    assert_eq!(decode(&[0, 0, 0, 0x54, 0, 0, 0, 7], 43), Err(WireError::Truncated));
    let long = [0, 0, 0, 0x57, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff, b'x', 0];
    assert_eq!(decode(&long, 43), Err(WireError::Truncated));
    let no_nul = [0, 0, 0, 0x57, 0, 0, 0, 1, 0, 0, 0, 1, b'x'];
    assert_eq!(decode(&no_nul, 43), Err(WireError::Truncated));
    let empty = [0, 0, 0, 0x57, 0, 0, 0, 1, 0, 0, 0, 0];
    assert_eq!(decode(&empty, 43), Err(WireError::Truncated));
    // Bytes left over (icecream: "message not read correctly"), unknown types, nothing.
    assert_eq!(decode(&[0, 0, 0, 0x52, 0], 43), Err(WireError::Trailing(1)));
    assert_eq!(decode(&[0, 0, 0, 0x4d], 43), Err(WireError::Type(kind::JOB_DONE))); // 'M'
    assert_eq!(decode(&[], 43), Err(WireError::Truncated));
}
