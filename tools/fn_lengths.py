"""List the Rust functions in src/ longer than N lines (default 80), outside tests: `python3 tools/fn_lengths.py [N]`."""
import re, sys, pathlib
# Test code is left out: #[cfg(test)] modules and test-module files (tests.rs).
N = int(sys.argv[1]) if len(sys.argv) > 1 else 80
out = []
for p in pathlib.Path("src").rglob("*.rs"):
    if p.name == "tests.rs":
        continue
    lines = p.read_text().splitlines()
    # cut test modules
    end = len(lines)
    for i, l in enumerate(lines):
        if l.strip() == "#[cfg(test)]" and i + 1 < len(lines) and re.match(r"\s*mod \w+", lines[i + 1]):
            end = i; break
    i = 0
    while i < end:
        m = re.match(r"\s*(pub(\([^)]*\))?\s+)?(async\s+)?(const\s+)?(unsafe\s+)?fn\s+(\w+)", lines[i])
        if m:
            depth = 0; started = False; j = i
            while j < end:
                s = re.sub(r'"(\\.|[^"\\])*"', '""', lines[j]); s = re.sub(r"'(\\.|[^'\\])'", "''", s); s = s.split("//")[0]
                for ch in s:
                    if ch == "{": depth += 1; started = True
                    elif ch == "}": depth -= 1
                if started and depth == 0: break
                if not started and s.rstrip().endswith(";"): break
                j += 1
            n = j - i + 1
            if started and n > N: out.append((n, f"{p}:{i+1}", m.group(6)))
            i += 1
        else:
            i += 1
for n, loc, name in sorted(out, reverse=True): print(n, loc, name)
