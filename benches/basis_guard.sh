#!/usr/bin/env bash
# benches/basis_guard.sh: the adaptive method at legal but out-of-reach α, two
# binaries (ebv-basis-old, ebv-basis-new in the current folder) one after the
# other, and --alpha auto from the new one. Output: a Markdown table.
set -u
cases=(
  "--classes 200 --dim 16 --alpha 0.25 --steps 3000"
  "--classes 500 --dim 32 --alpha 0.1765 --steps 600"
  "--classes 1000 --dim 64 --alpha 0.1223 --steps 600"
  "--classes 1000 --dim 100 --alpha 0.1044 --steps 1500"
  "--classes 1000 --dim 100 --alpha 0.1044 --steps 1500 --init auto"
  "--classes 1000 --dim 512 --alpha 0.05 --steps 3000"
  "--classes 1000 --dim 200 --alpha 0.08 --steps 3000"
)
printf '| flags (all `--method adaptive`) | binary | max |cos| | × Welch | steps | recoveries | s |\n|---|---|---|---|---|---|---|\n'
for c in "${cases[@]}"; do
  for b in old new; do
    ./ebv-basis-$b generate $c --method adaptive -q --json --out ./x.safetensors |
      python3 -c "import json,sys; j=json.load(sys.stdin); print('| \`$c\` | $b | %.4f | %.3f | %d | %d | %.1f |' % (j['max_abs_cos'], j['ratio_to_welch'], j['steps'], j.get('recoveries',0), j['seconds']))"
  done
  a=$(echo "$c" | sed 's/--alpha [0-9.]*/--alpha auto/')
  ./ebv-basis-new generate $a --method adaptive -q --json --out ./x.safetensors |
    python3 -c "import json,sys; j=json.load(sys.stdin); print('| \`$a\` | new | %.4f | %.3f | %d | %d | %.1f |' % (j['max_abs_cos'], j['ratio_to_welch'], j['steps'], j.get('recoveries',0), j['seconds']))"
done
