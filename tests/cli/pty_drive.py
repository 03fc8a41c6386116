#!/usr/bin/python3
"""Drive an interactive `moonbox ... -it ...` through a pseudo-terminal, for cli.sh.

    pty_drive.py SCRIPT -- COMMAND...

SCRIPT is a list of steps separated by ";;":
    expect:TEXT      wait (up to 20 s) until TEXT appeared in the output since the last expect
    send:TEXT        write TEXT (\\r, \\n, \\x10 escapes are understood)
    resize:ROWSxCOLS change the terminal size (the kernel sends SIGWINCH)
The terminal starts at $PTY_SIZE (ROWSxCOLS, default 24x80).
Prints the exit code as "exit=N" and "termios=restored|changed" (is the terminal back in
its original mode?), and the output on failure. Exits 0 when every expect matched.
"""
import os, select, subprocess, sys, termios, time, fcntl, struct


def unescape(s):
    return s.encode().decode("unicode_escape")


def main():
    sep = sys.argv.index("--")
    steps = [s for s in sys.argv[1:sep][0].split(";;") if s]
    cmd = sys.argv[sep + 1:]
    master, slave = os.openpty()
    rows, cols = (int(x) for x in os.environ.get("PTY_SIZE", "24x80").split("x"))
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    before = termios.tcgetattr(slave)
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
    out = b""
    mark = 0
    ok = True

    def pump(timeout):
        """True: data read; None: nothing within timeout; False: end of output"""
        nonlocal out
        r, _, _ = select.select([master], [], [], timeout)
        if r:
            try:
                data = os.read(master, 65536)
            except OSError:
                return False
            out += data
            return bool(data)
        return None

    for step in steps:
        kind, _, arg = step.partition(":")
        if kind == "expect":
            want = unescape(arg).encode()
            deadline = time.time() + 20
            while want not in out[mark:] and time.time() < deadline:
                if pump(0.2) is False or (proc.poll() is not None and pump(0.2) is None):
                    break
            if want in out[mark:]:
                mark = out.index(want, mark) + len(want)
            else:
                print(f"not found: {arg!r}")
                ok = False
                break
        elif kind == "send":
            os.write(master, unescape(arg).encode())
        elif kind == "resize":
            rows, cols = (int(x) for x in arg.split("x"))
            fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        elif kind == "sleep":
            end = time.time() + float(arg)
            while time.time() < end:
                pump(0.05)
    deadline = time.time() + 20
    while proc.poll() is None and time.time() < deadline:
        pump(0.1)
    if proc.poll() is None:
        proc.kill()
        print("still running: killed")
        ok = False
    while pump(0.05) is True and len(out) < 1 << 20:
        pass
    after = termios.tcgetattr(slave)
    print(f"exit={proc.returncode}")
    print("termios=" + ("restored" if after == before else "changed"))
    if not ok or os.environ.get("PTY_SHOW"):
        print("output: " + repr(out.decode(errors="replace")))
    sys.exit(0 if ok else 1)


main()
