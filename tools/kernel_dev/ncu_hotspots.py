"""A kernel's stall hot spots from an ncu source view, as a short text file.

    ncu --import F.ncu-rep --page source --csv --print-source sass > F.csv
    python3 tools/kernel_dev/ncu_hotspots.py F.csv hotspots.txt

Writes the stall samples and executed instructions in all, the samples per stall reason, and the
40 SASS instructions with the most samples (the CSV itself is megabytes; results keep this).
"""
import csv, sys, re
rows = list(csv.reader(open(sys.argv[1], errors='replace')))
# the header is the first row that has a "Source" column
hi = next(i for i, r in enumerate(rows) if 'Source' in r)
head, body = rows[hi], [r for r in rows[hi + 1:] if len(r) == len(rows[hi])]
col = {h: i for i, h in enumerate(head)}
def find(*keys):
    for h in head:
        if all(k.lower() in h.lower() for k in keys): return col[h]
    return None
src, addr = col['Source'], find('Address')
samp = find('Warp Stall Sampling (All')
exe = find('Instructions Executed')
def num(x):
    try: return float(x.replace(',', ''))
    except: return 0.0
total = sum(num(r[samp]) for r in body)
out = open(sys.argv[2], 'w')
print(f'stall samples {total:.0f}, warp instructions executed {sum(num(r[exe]) for r in body) if exe is not None else 0:.0f}', file=out)
# stall-reason columns (stall_wait, ...), without their "(Not Issued)" twins: those count a subset
# of the same samples
reasons = [h for h in head if re.search(r'stall', h, re.I) and h != head[samp] and not re.search(r'not.issued', h, re.I)]
tot = {h: sum(num(r[col[h]]) for r in body) for h in reasons}
print('reason totals:', ', '.join(f'{h}={v:.0f}' for h, v in sorted(tot.items(), key=lambda x: -x[1]) if v > 0), file=out)
print('\ntop 40 instructions by samples (address, % of samples, executed, SASS):', file=out)
for r in sorted(body, key=lambda r: -num(r[samp]))[:40]:
    print(f'  {r[addr] if addr is not None else "?":>8} {100 * num(r[samp]) / max(total, 1):5.1f}% {num(r[exe]) if exe is not None else 0:>10.0f}  {r[src]}', file=out)
