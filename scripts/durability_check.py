#!/usr/bin/env python3
"""Durability audit of a strace log, in the style of ALICE.

Checks, at every acknowledgement, that everything under the data directory
the acknowledgement may depend on had reached the disk:

1. every file written (or truncated) before the acknowledgement was fsynced or
   fdatasynced after its last write and before the acknowledgement;
2. every file or directory created (open with O_CREAT, mkdir) or renamed
   into place before it had its parent directory fsynced after that and
   before the acknowledgement.

`sync_file_range` is not a sync (it writes pages, not metadata, and does not
flush the disk cache): sled 0.34's own `flush()` ends there.

Background work (applying entries, building a snapshot) keeps writing while
a request is in flight, and no acknowledgement depends on it. So a write or
creation that *starts after the request was sent* is excused if the same
file (directory) was synced at least once while the request was in flight;
everything that happened before the request was sent is held to the strict
rule. A file that is never synced (sled's `blobs/`) is never excused.

Scratch files (`--scratch REGEX`, matched against the file name) are files
that recovery deletes unread (Tessera's `snapshots/tmp-*`: a snapshot being
built or received); until renamed into place nothing depends on them, so
they are not checked under their scratch name. Once renamed, the file is
held to the rules under its new name from the rename on, with the writes
and syncs it had before. A commit file (`--commit-file NAME`: sled's `db`,
which holds the snapshot pointer) written after a scratch file was renamed
into place while the request was in flight is the rest of that background
commit: excused if it is synced afterwards.

Input: the strace log (`strace -f -ttt -T -yy`), the data directory, and an
acknowledgements file with one line per acknowledged request:
`<sent epoch seconds> <received epoch seconds> <label>` as the client saw
them. The acknowledgement point is the start of the node's last write to a
socket that ended before the client's receive time, if the trace has
socket writes for it (more precise); else the receive time itself. The
start, not the end: once the node has begun to send the answer it has
stopped waiting for anything, so a file it writes while that write is in
progress (background work: a snapshot being committed) cannot be one the
answer depends on, and every sync the answer depends on must have ended
before it began.

Usage:
  durability_check.py TRACE DATA_DIR ACKS [--cwd DIR] [--api-port P] [--scratch REGEX]... [--commit-file NAME]...
  durability_check.py --self-test
Exit status: 0 when every acknowledgement is covered, 1 on a violation,
2 on bad input.
"""

import bisect
import os
import re
import sys
from collections import defaultdict

WRITES = {"write", "pwrite64", "writev", "pwritev", "pwritev2", "ftruncate"}
SOCK_WRITES = {"write", "writev", "sendmsg", "sendto", "sendmmsg"}
SYNCS = {"fsync", "fdatasync"}
O_CREAT_OPENS = {"open", "openat", "creat"}

LINE = re.compile(r"^(?:\[pid\s+)?(\d+)\]?\s+(\d+\.\d+)\s+(.*)$")
RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>(.*)$")
CALL = re.compile(r"^(\w+)\((.*)$")
RET = re.compile(r"\)\s+=\s+(-?\d+|\?)(?:<([^>]*)>)?(?:\s+(\w+))?.*?(?:<(\d+\.\d+)>)?\s*$")
FD_PATH = re.compile(r"^\s*(-?\d+|AT_FDCWD)<(.*?)>(?=,|\s|$)")
STR = re.compile(r'"((?:[^"\\]|\\.)*)"')


def unescape(s):
    return bytes(s, "utf-8").decode("unicode_escape").encode("latin-1").decode("utf-8", "replace")


def parse(path):
    """Yields (pid, start, end, name, args, retval, ret_path) per completed
    syscall; `end` is start + duration."""
    pending = {}
    with open(path, errors="replace") as f:
        for raw in f:
            m = LINE.match(raw.rstrip("\n"))
            if not m:
                continue
            pid, ts, rest = m.group(1), float(m.group(2)), m.group(3)
            if rest.endswith("<unfinished ...>"):
                c = CALL.match(rest)
                if c:
                    pending[(pid, c.group(1))] = (ts, c.group(2)[: -len("<unfinished ...>")])
                continue
            r = RESUMED.match(rest)
            if r:
                name = r.group(1)
                start, head = pending.pop((pid, name), (ts, ""))
                rest_args = head + r.group(2)
            else:
                c = CALL.match(rest)
                if not c:
                    continue
                name, rest_args, start = c.group(1), c.group(2), ts
            ret = RET.search(rest_args)
            if not ret:
                continue
            dur = float(ret.group(4)) if ret.group(4) else 0.0
            end = start + dur
            args = rest_args[: ret.start()]
            yield pid, start, end, name, args, ret.group(1), ret.group(2)


def split_args(args):
    out, depth, cur, q = [], 0, "", False
    i = 0
    while i < len(args):
        ch = args[i]
        if q:
            cur += ch
            if ch == "\\" and i + 1 < len(args):
                cur += args[i + 1]
                i += 1
            elif ch == '"':
                q = False
        elif ch == '"':
            q, cur = True, cur + ch
        elif ch in "([{":
            depth, cur = depth + 1, cur + ch
        elif ch in ")]}":
            depth, cur = depth - 1, cur + ch
        elif ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
        i += 1
    if cur.strip():
        out.append(cur.strip())
    return out


def fd_path(arg):
    m = FD_PATH.match(arg)
    return m.group(2) if m else None


def at_path(dirarg, patharg, cwd):
    s = STR.search(patharg)
    if not s:
        return None
    p = unescape(s.group(1))
    if os.path.isabs(p):
        return os.path.normpath(p)
    base = fd_path(dirarg) if dirarg is not None else None
    return os.path.normpath(os.path.join(base or cwd, p))


class Trace:
    def __init__(self):
        self.writes = defaultdict(list)  # path -> [(start, end)]
        self.syncs = defaultdict(list)  # path -> [end]
        self.created = defaultdict(list)  # path -> [time]
        self.removed = defaultdict(list)  # path -> [time]
        self.renamed_from = defaultdict(list)  # new path -> [(time, old path)]
        self.sock_writes = []  # (end, start, local port)


def load(trace_path, cwd):
    t = Trace()
    for _pid, start, end, name, args, ret, ret_path in parse(trace_path):
        if ret == "?" or ret.startswith("-"):
            continue
        a = split_args(args)
        if name in WRITES or name in SOCK_WRITES:
            p = fd_path(a[0]) if a else None
            if p and p.startswith(("TCP:", "TCPv6:")):
                m = re.search(r":(\d+)->", p)
                if m:
                    t.sock_writes.append((end, start, int(m.group(1))))
            elif p and name in WRITES and (int(ret) > 0 or name == "ftruncate"):
                t.writes[os.path.normpath(p)].append((start, end))
        elif name in SYNCS:
            p = fd_path(a[0]) if a else None
            if p:
                t.syncs[os.path.normpath(p)].append(end)
        elif name in O_CREAT_OPENS:
            flags = a[2] if name == "openat" and len(a) > 2 else (a[1] if len(a) > 1 else "")
            if name == "creat" or "O_CREAT" in flags:
                p = ret_path or (at_path(a[0], a[1], cwd) if name == "openat" else at_path(None, a[0], cwd))
                if p and not p.startswith(("TCP", "UNIX", "pipe", "socket", "anon_inode")):
                    p = os.path.normpath(p)
                    if not t.created[p] and not t.writes[p] and not t.syncs[p]:
                        t.created[p].append(end)
        elif name in ("mkdir", "mkdirat"):
            p = at_path(a[0], a[1], cwd) if name == "mkdirat" else at_path(None, a[0], cwd)
            if p:
                t.created[p].append(end)
        elif name in ("rename", "renameat", "renameat2"):
            if name == "rename":
                old, new = at_path(None, a[0], cwd), at_path(None, a[1], cwd)
            else:
                old, new = at_path(a[0], a[1], cwd), at_path(a[2], a[3], cwd)
            if old and new:
                t.removed[old].append(end)
                t.created[new].append(end)
                t.renamed_from[new].append((end, old))
                t.writes[new].extend(t.writes.get(old, []))
                t.syncs[new].extend(t.syncs.get(old, []))
        elif name in ("unlink", "unlinkat"):
            p = at_path(None, a[0], cwd) if name == "unlink" else at_path(a[0], a[1], cwd)
            if p:
                t.removed[p].append(end)
    for v in list(t.syncs.values()) + list(t.created.values()) + list(t.removed.values()):
        v.sort()
    for v in t.writes.values():
        v.sort()
    t.sock_writes.sort()
    return t


def synced_between(syncs, lo, hi):
    i = bisect.bisect_left(syncs, lo)
    return i < len(syncs) and syncs[i] <= hi


def last_before(times, t):
    i = bisect.bisect_left(times, t)
    return times[i - 1] if i else None


def under(path, root):
    return path == root or path.startswith(root.rstrip("/") + "/")


def check(t, data_dir, acks, api_port=None, scratch=(), commit_files=()):
    """Returns (violations, excused, ack points) for acks [(sent, recv, label)]."""
    data_dir = os.path.normpath(os.path.abspath(data_dir))
    scratch = [re.compile(r) for r in scratch]

    def checked(path):
        name = os.path.basename(path)
        return under(path, data_dir) and not any(r.fullmatch(name) for r in scratch)

    violations, excused, points = [], 0, []
    # Scratch files renamed into place (a snapshot committed): when.
    commits = sorted(
        at
        for lst in t.renamed_from.values()
        for at, old in lst
        if any(r.fullmatch(os.path.basename(old)) for r in scratch)
    )
    socks = [(e, s) for e, s, port in t.sock_writes if api_port is None or port == api_port]
    sock_ends = [e for e, _ in socks]
    for sent, recv, label in acks:
        i = bisect.bisect_left(sock_ends, recv)
        w = socks[i - 1] if i else None
        # The start of the last socket write that ended before the client
        # received the answer (and after it sent the request).
        ack = w[1] if w is not None and w[1] >= sent else recv
        points.append(ack)
        for path, ws in t.writes.items():
            if not checked(path):
                continue
            ends = [e for s, e in ws if s < ack]
            if not ends:
                continue
            # A name that does not exist yet at `ack` (a rename brings it
            # later): its earlier writes are checked under the old name.
            if t.created.get(path) and last_before(t.created[path], ack) is None:
                continue
            # Only the copy that exists at `ack` matters.
            rm = last_before(t.removed.get(path, []), ack)
            cr = last_before(t.created.get(path, []), ack)
            if rm is not None and (cr is None or cr < rm):
                continue
            last = max(ends)
            if synced_between(t.syncs.get(path, []), last, ack):
                continue
            first = min(s for s, e in ws if e == last)
            if first >= sent and synced_between(t.syncs.get(path, []), sent, ack):
                excused += 1
                continue
            # The rest of a snapshot commit that began while the request was
            # in flight: once a scratch file is renamed into place, the
            # commit writes its pointer (sled, `--commit-file`) and syncs
            # it. Background work the answer does not wait for (found when
            # a loaded machine put the answer between that write and its
            # sync). Still reported if never synced.
            if (
                os.path.basename(path) in commit_files
                and first >= sent
                and last_before(commits, first) is not None
                and last_before(commits, first) >= sent
                and synced_between(t.syncs.get(path, []), last, float("inf"))
            ):
                excused += 1
                continue
            violations.append(f"{label}: {path} written at {last:.6f} is not synced before the acknowledgement at {ack:.6f}")
        for path, cs in t.created.items():
            if not checked(path):
                continue
            c = last_before(cs, ack)
            if c is None:
                continue
            rm = last_before(t.removed.get(path, []), ack)
            if rm is not None and rm >= c:
                continue
            parent = os.path.dirname(path)
            psyncs = t.syncs.get(parent, [])
            if synced_between(psyncs, c, ack):
                continue
            if c >= sent and synced_between(psyncs, sent, ack):
                excused += 1
                continue
            # A scratch file renamed into place while the request was in
            # flight is a background commit (a snapshot): the
            # acknowledgement does not depend on it, and the log purge that
            # does runs only after the commit synced the directory. It must
            # still be synced after the rename, or this is reported.
            if (
                c >= sent
                and any(
                    at == c and any(r.fullmatch(os.path.basename(old)) for r in scratch)
                    for at, old in t.renamed_from.get(path, [])
                )
                and synced_between(psyncs, c, float("inf"))
            ):
                excused += 1
                continue
            violations.append(f"{label}: {path} created at {c:.6f} but its directory {parent} is not synced before the acknowledgement at {ack:.6f}")
    return violations, excused, points


def read_acks(path):
    acks = []
    with open(path) as f:
        for line in f:
            parts = line.split(maxsplit=2)
            if len(parts) >= 2:
                acks.append((float(parts[0]), float(parts[1]), parts[2].strip() if len(parts) > 2 else "ack"))
    return acks


SYNTHETIC = """\
100 10.000000 openat(AT_FDCWD</work>, "/d/db", O_RDWR|O_CREAT|O_CLOEXEC, 0644) = 3</d/db> <0.000010>
100 10.000100 fsync(4</d>) = 0 <0.000100>
101 11.000000 pwrite64(3</d/db>, ""..., 4096, 0) = 4096 <0.000010>
101 11.000100 fdatasync(3</d/db> <unfinished ...>
100 11.000200 openat(AT_FDCWD</work>, "/d/blobs/42", O_WRONLY|O_CREAT|O_EXCL|O_CLOEXEC, 0666) = 7</d/blobs/42> <0.000010>
100 11.000300 write(7</d/blobs/42>, ""..., 200000) = 200000 <0.000200>
101 11.000900 <... fdatasync resumed>) = 0 <0.000800>
100 11.001000 write(9<TCP:[127.0.0.1:7443->127.0.0.1:50000]>, ""..., 120) = 120 <0.000010>
"""


SCRATCH = """\
100 10.000000 openat(AT_FDCWD</work>, "/d/db", O_RDWR|O_CREAT|O_CLOEXEC, 0644) = 3</d/db> <0.000010>
100 10.000100 fsync(4</d>) = 0 <0.000100>
100 10.000200 fsync(6</d/snapshots>) = 0 <0.000100>
101 11.000000 pwrite64(3</d/db>, ""..., 4096, 0) = 4096 <0.000010>
101 11.000100 fdatasync(3</d/db>) = 0 <0.000800>
102 11.000200 openat(AT_FDCWD</work>, "/d/snapshots/tmp-build-1", O_RDWR|O_CREAT|O_EXCL|O_CLOEXEC, 0666) = 5</d/snapshots/tmp-build-1> <0.000010>
102 11.000300 write(5</d/snapshots/tmp-build-1>, ""..., 200000) = 200000 <0.000200>
100 11.001000 write(9<TCP:[127.0.0.1:7443->127.0.0.1:50000]>, ""..., 120) = 120 <0.000010>
102 11.002000 fsync(5</d/snapshots/tmp-build-1>) = 0 <0.000100>
102 11.003000 rename("/d/snapshots/tmp-build-1", "/d/snapshots/1-7-1.snap") = 0 <0.000010>
102 11.004000 fsync(6</d/snapshots>) = 0 <0.000100>
"""

# A background write (a snapshot's pointer in sled) that starts while the
# node is already sending its answer: not one the answer waited for. The
# answer's own write (the log segment) was synced before the send began.
OVERLAP = """\
100 10.000000 openat(AT_FDCWD</work>, "/d/db", O_RDWR|O_CREAT|O_CLOEXEC, 0644) = 3</d/db> <0.000010>
100 10.000050 openat(AT_FDCWD</work>, "/d/log.seg", O_RDWR|O_CREAT|O_CLOEXEC, 0644) = 8</d/log.seg> <0.000010>
100 10.000100 fsync(4</d>) = 0 <0.000100>
101 11.000000 pwrite64(8</d/log.seg>, ""..., 200, 0) = 200 <0.000010>
101 11.000100 fdatasync(8</d/log.seg>) = 0 <0.000800>
100 11.001000 write(9<TCP:[127.0.0.1:7443->127.0.0.1:50000]>, ""..., 120 <unfinished ...>
102 11.001100 pwrite64(3</d/db>, ""..., 24, 0) = 24 <0.000010>
100 11.001500 <... write resumed>) = 120 <0.000500>
102 11.002000 fdatasync(3</d/db>) = 0 <0.000800>
"""

LATER_ACK = """\
101 13.000000 pwrite64(3</d/db>, ""..., 4096, 4096) = 4096 <0.000010>
101 13.000100 fdatasync(3</d/db>) = 0 <0.000800>
100 13.001000 write(9<TCP:[127.0.0.1:7443->127.0.0.1:50000]>, ""..., 120) = 120 <0.000010>
"""


def self_test():
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        trace = os.path.join(tmp, "trace")
        with open(trace, "w") as f:
            f.write(SYNTHETIC)
        t = load(trace, "/work")
        # The acknowledgement at 11.001 (its socket write's start) follows
        # the db's fdatasync, but the blob file was neither synced nor had
        # its directory synced.
        v, _, points = check(t, "/d", [(10.5, 11.5, "revoke 1")], api_port=7443)
        assert [round(p, 6) for p in points] == [11.001], points
        assert len(v) == 2 and all("/d/blobs/42" in x for x in v), v
        # A file written after the answer began to go out is not one it
        # depends on; a sync still running when it began does not count.
        with open(trace, "w") as f:
            f.write(OVERLAP)
        v, _, points = check(load(trace, "/work"), "/d", [(10.5, 11.5, "revoke 1")], api_port=7443)
        assert [round(p, 6) for p in points] == [11.001] and v == [], (points, v)
        with open(trace, "w") as f:
            f.write(OVERLAP.replace("11.000100 fdatasync(8", "11.000900 fdatasync(8"))
        v, _, _ = check(load(trace, "/work"), "/d", [(10.5, 11.5, "revoke 1")], api_port=7443)
        assert len(v) == 1 and "/d/log.seg" in v[0], v
        # Without the blob, the same acknowledgement is covered.
        with open(trace, "w") as f:
            f.write("".join(l + "\n" for l in SYNTHETIC.splitlines() if "blobs" not in l))
        v, _, _ = check(load(trace, "/work"), "/d", [(10.5, 11.5, "revoke 1")], api_port=7443)
        assert v == [], v
        # An acknowledgement before the fdatasync completed is a violation.
        v, _, _ = check(load(trace, "/work"), "/d", [(10.5, 11.0005, "early")])
        assert len(v) == 1 and "/d/db" in v[0], v
        # A scratch file written in the background and renamed into place
        # after the acknowledgement: not a dependency of it...
        with open(trace, "w") as f:
            f.write(SCRATCH)
        t = load(trace, "/work")
        v, _, _ = check(t, "/d", [(10.5, 11.5, "revoke 1")], api_port=7443, scratch=["tmp-.*"])
        assert v == [], v
        # ...but without the scratch rule it is reported...
        v, _, _ = check(t, "/d", [(10.5, 11.5, "revoke 1")], api_port=7443)
        assert v and all("tmp-build-1" in x for x in v), v
        # ...and under its final name it must have been synced before the
        # rename: a later acknowledgement catches a missing fsync.
        with open(trace, "w") as f:
            f.write("".join(l + "\n" for l in SCRATCH.splitlines() if "fsync(5" not in l) + LATER_ACK)
        v, _, _ = check(load(trace, "/work"), "/d", [(12.5, 13.5, "revoke 2")], api_port=7443, scratch=["tmp-.*"])
        assert len(v) == 1 and "/d/snapshots/1-7-1.snap written" in v[0], v
        # A snapshot committed while a request was in flight, renamed into
        # place just before the acknowledgement and its directory synced
        # just after: background work, excused...
        racing = SCRATCH.replace("100 11.001000 write(9", "100 11.003500 write(9")
        with open(trace, "w") as f:
            f.write(racing)
        v, excused, _ = check(load(trace, "/work"), "/d", [(10.5, 11.5, "revoke 1")], api_port=7443, scratch=["tmp-.*"])
        assert v == [] and excused >= 1, (v, excused)
        # ...but never when the directory is not synced after the rename.
        with open(trace, "w") as f:
            f.write("".join(l + "\n" for l in racing.splitlines() if "11.004000 fsync(6" not in l))
        v, _, _ = check(load(trace, "/work"), "/d", [(10.5, 11.5, "revoke 1")], api_port=7443, scratch=["tmp-.*"])
        assert len(v) == 1 and "1-7-1.snap created" in v[0], v
        # The commit's pointer in sled, written after the rename and synced
        # after the answer went out: excused as the rest of the commit when
        # `db` is a commit file, and only then...
        pointer = racing.replace(
            "102 11.003000 rename",
            "102 11.002500 rename",
        ).replace(
            "100 11.003500 write(9",
            "102 11.002800 pwrite64(3</d/db>, \"\"..., 24, 8192) = 24 <0.000010>\n100 11.003500 write(9",
        ) + "102 11.005000 fdatasync(3</d/db>) = 0 <0.000100>\n"
        # (No sync of the db while the request is in flight.)
        pointer = "".join(
            l + "\n" for l in pointer.splitlines() if not l.startswith(("101 11.000000", "101 11.000100"))
        )
        with open(trace, "w") as f:
            f.write(pointer)
        t = load(trace, "/work")
        v, _, _ = check(t, "/d", [(10.5, 11.5, "revoke 1")], api_port=7443, scratch=["tmp-.*"], commit_files=["db"])
        assert v == [], v
        v, _, _ = check(t, "/d", [(10.5, 11.5, "revoke 1")], api_port=7443, scratch=["tmp-.*"])
        assert len(v) == 1 and "/d/db written" in v[0], v
        # ...never when it is not synced afterwards...
        with open(trace, "w") as f:
            f.write(pointer.replace("102 11.005000 fdatasync(3</d/db>) = 0 <0.000100>\n", ""))
        v, _, _ = check(load(trace, "/work"), "/d", [(10.5, 11.5, "revoke 1")], api_port=7443, scratch=["tmp-.*"], commit_files=["db"])
        assert len(v) == 1 and "/d/db written" in v[0], v
        # ...and never when the rename came before the request was sent.
        v, _, _ = check(t, "/d", [(11.0026, 11.5, "revoke 1")], api_port=7443, scratch=["tmp-.*"], commit_files=["db"])
        assert any("/d/db written" in x for x in v), v
    print("durability_check self-test: ok (reports an unsynced blob file, an early acknowledgement "
          "and a snapshot file renamed into place unsynced)")


def main(argv):
    if argv[1:] == ["--self-test"]:
        self_test()
        return 0
    args, cwd, port, scratch, commit_files = [], os.getcwd(), None, [], []
    it = iter(argv[1:])
    for a in it:
        if a == "--cwd":
            cwd = next(it)
        elif a == "--api-port":
            port = int(next(it))
        elif a == "--scratch":
            scratch.append(next(it))
        elif a == "--commit-file":
            commit_files.append(next(it))
        else:
            args.append(a)
    if len(args) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    trace, data_dir, acks_path = args
    acks = read_acks(acks_path)
    if not acks:
        print("no acknowledgements to check", file=sys.stderr)
        return 2
    t = load(trace, cwd)
    if not t.syncs:
        print("the trace holds no fsync at all: wrong trace?", file=sys.stderr)
        return 2
    violations, excused, points = check(t, data_dir, acks, port, scratch, commit_files)
    files = sorted(p for p in t.writes if under(p, os.path.abspath(data_dir)))
    print(f"checked {len(acks)} acknowledgements ({sum(1 for p, a in zip(points, acks) if p != a[1])} at the node's socket write), "
          f"{len(files)} files written under {data_dir}, {excused} concurrent background writes excused")
    for p in files:
        print(f"  {p}: {len(t.writes[p])} writes, {len(t.syncs.get(p, []))} syncs")
    if violations:
        print(f"DURABILITY VIOLATIONS: {len(violations)}")
        seen = set()
        for v in violations:
            key = v.split(": ", 1)[1].split(" written at")[0].split(" created at")[0]
            if key in seen:
                continue
            seen.add(key)
            print("  " + v)
        return 1
    print("durability audit: every acknowledgement was covered by fsyncs")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
