#!/usr/bin/env bash
# The main job of `make run`: a local 2-node cluster (simulated hardware nodes in network
# namespaces, one etcd) with demo container 101 running on node n1 at 10.213.0.101.
set -euo pipefail
export PATH=/usr/local/sbin:$PATH
vzfleet up --nodes 2
# the demo container may already exist on either node (it may have been migrated)
node=""
for n in n1 n2; do
  if vzctl --node "$n" status 101 | grep -q ' exist '; then node=$n; fi
done
if [ -z "$node" ]; then
  node=n1
  vzctl --node n1 create 101 --ostemplate busybox --hostname demo101 --ipadd 10.213.0.101 \
    --description "vzfleet demo container"
fi
if ! vzctl --node "$node" status 101 | grep -q ' running'; then
  vzctl --node "$node" start 101 --wait
  vzctl --node "$node" exec 101 'mkdir -p /www && echo "hello from container 101" > /www/index.html && httpd -p 80 -h /www'
fi
echo
for n in n1 n2; do echo "node $n:"; vzlist --node "$n" -a; done
echo
cat <<'HINT'
Container 101 serves HTTP on 10.213.0.101:
  ip netns exec vzc-lan busybox wget -q -O - http://10.213.0.101/
Move it live to the other node, keeping its address and connections:
  vzmigrate --online -t n2 101      (or n1)
More: vzctl --node n2 enter 101; vzlist --node n2; vzfleet status; vzfleet down
HINT
