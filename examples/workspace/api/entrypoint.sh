#!/bin/sh
# The workspace API runs as nobody under a root PID 1. Not USER nobody in the image: joining the
# namespaces of a process owned by another user needs CAP_SYS_PTRACE, which Docker inside the lab's
# guest lacks, so every exec (the health check) into such a container fails ("setns process: exit status 1").
# Docker's SIGTERM is passed on; the API closes its listener and exits.
set -eu
setpriv --reuid=nobody --regid=nogroup --init-groups -- python3 /opt/workspace/app.py &
api=$!
trap 'kill -TERM "$api"' TERM INT
# A wait interrupted by the trap returns above 128: then wait again, for the API to end.
status=0
wait "$api" || status=$?
if [ "$status" -gt 128 ]; then
    status=0
    wait "$api" || status=$?
fi
exit "$status"
