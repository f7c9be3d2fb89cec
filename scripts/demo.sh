#!/usr/bin/env bash
# The main job of `make run`: the node agent up, a busybox template, demo container 101 running.
set -euo pipefail
export PATH=/usr/local/sbin:$PATH
vzfleet up
if ! vzfleet template list 2>/dev/null | grep -q '^busybox '; then
  vzfleet template build busybox
fi
if ! vzctl status 101 | grep -q ' exist '; then
  vzctl create 101 --ostemplate busybox --hostname demo101 --description "vzfleet demo container"
fi
if ! vzctl status 101 | grep -q ' running'; then
  vzctl start 101 --wait
fi
echo
vzlist -a
echo
echo "Try: vzctl exec 101 ps; vzctl enter 101; vzctl set 101 --hostname web1 --save; vzctl stop 101"
