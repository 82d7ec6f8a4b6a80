#!/bin/bash
# On the device machine: Hive from carried wheels; a devstack of one process agent;
# what it detects of the GPU; a job constrained on the GPU label that runs nvidia-smi;
# then bench/jobs.py placement (one vs two requesters) on this machine's 16 cores, for
# jobs of count 100 and of count 1.
cd "$(dirname "$0")/../.."
export HOME=/tmp/hivehome PATH=$PWD/.venv/bin:$PATH
mkdir -p $HOME
t0=$(date +%s)
[ -n "$SKIP_SETUP" ] || bash bench/device/setup.sh > $OUT/setup.log 2>&1 || { tail -30 $OUT/setup.log; exit 1; }
echo "setup $(( $(date +%s) - t0 ))s"; nproc; nvidia-smi -L
hivectl devstack -n 1 > $OUT/devstack.log 2>&1 &
for i in $(seq 90); do hivectl node list 2>/dev/null | grep -q "node-1.*HEALTHY" && break; sleep 1; done
hivectl node list -o wide | tee $OUT/nodelist.txt
hivectl node describe node-1 | tee $OUT/describe.txt
hivectl node list -o json > $OUT/nodes.json
python3 -c "import json;d=json.load(open('$OUT/nodes.json'));d=d if isinstance(d,list) else d.get('nodes',d);[print(n['node_id'],n.get('type'),n.get('labels'),(n.get('resources') or {}).get('total',{}).get('gpu'),[g.get('model') for g in (n.get('info') or {}).get('gpus',[])]) for n in d]"
hivectl job submit --engine process -l 'hive.io/gpu-model' -- nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee $OUT/gpujob.txt
hivectl job submit --engine process -l 'hive.io/gpu-model' -o json --no-wait -- true > /dev/null
hivectl job list | tail -3
kill -INT %1; wait %1
echo "--- placement bench (count 100, then count 1)"
summary() {
  python3 -c "import json,sys;t=json.load(open(sys.argv[1]))['placement'];tr=t['two_requesters'];print(sys.argv[1],'two',tr['value'],tr['target'],'by round',tr['placed_per_s_by_round'],'ratio',tr['ratio_to_one'],'races',tr['lost_cas_races_by_requester'])" "$1"
}
if [ -z "$SKIP_BENCH" ]; then
  timeout 240 python bench/jobs.py --part placement --rounds 4 --jobs 80 > $OUT/placement.json 2> $OUT/placement.err
  echo "bench rc=$?"; tail -4 $OUT/placement.err; summary $OUT/placement.json
  timeout 180 python bench/jobs.py --part placement --rounds 3 --jobs 3000 --count 1 > $OUT/placement-count1.json 2> $OUT/placement-count1.err
  echo "bench rc=$?"; tail -4 $OUT/placement-count1.err; summary $OUT/placement-count1.json
fi
