#!/usr/bin/env bash
# The main job on the shipped example data: two daily snapshots into a local repository,
# then list, restore and compare. Everything happens under a temporary directory.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/casbak-demo.XXXXXX")
trap 'rm -rf "$work"' EXIT

export CASBAK_REPOSITORY="$work/repo"
export CASBAK_PASSWORD="demo password, not for real use"

step() { printf '\n== %s\n' "$*"; }

step "create an encrypted repository"
casbak init

step "day 1: snapshot the example alignment data"
cp -r "$here/data/day1" "$work/alignment"
casbak snapshot "$work/alignment" --tag day1

step "day 2: append preference pairs, change the learning rate, snapshot again"
python3 - "$work/alignment" <<'PY'
import json, sys
root = sys.argv[1]
with open(f"{root}/preferences/shard-000.jsonl", "a") as handle:
    for i in range(400, 420):
        handle.write(json.dumps({"id": f"pair-{i:05d}", "prompt": f"New prompt {i}",
                                 "chosen": "careful answer", "rejected": "careless answer"}) + "\n")
path = f"{root}/configs/dpo.yaml"
text = open(path).read().replace("lr: 5.0e-07", "lr: 1.0e-06")
open(path, "w").write(text)
PY
casbak snapshot "$work/alignment" --tag day2

step "list snapshots"
casbak snapshots

step "list the files of the latest snapshot"
casbak ls latest "$work/alignment" --long

step "restore day 1 and compare it with the shipped data"
day1=$(casbak snapshots --json --tag day1 | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
casbak restore "$day1" --target "$work/restored" --path "$work/alignment"
diff -r "$here/data/day1" "$work/restored" && echo "day 1 restored byte for byte"
