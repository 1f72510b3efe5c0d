#!/bin/bash -p
# build.sh: builds one image of a project, as the project's runtime user, for the life of this job.
# Rendered by rxslurm.slurm.script (every value below arrives as one quoted shell word); sbatch
# options come on sbatch's command line. The job's folder ($build_dir, the user's, 0700) gets the
# definition (build.def), a copy of the build context minus its exclusions (context/, the working
# folder of the build) and, when the build succeeds, image.sif. Its lines ("rx-build: ...") and
# Apptainer's go to the job's output, job-<id>.out, which members read with `rxctl image logs`;
# rxd reads the last "rx-build:" line when the job ends.
#rx:param build_dir
#rx:param context
#rx:param definition
#rx:param ignore
#rx:param apptainer
#rx:param no_https
set -u
build_dir={{build_dir}}
context={{context}}
definition={{definition}}
ignore={{ignore}}
apptainer={{apptainer}}
no_https={{no_https}}
# Nothing in the job's environment (a shared account's login profile, say) may change the build.
unset BASH_ENV ENV
for name in $(compgen -e); do [[ $name == APPTAINER* || $name == SINGULARITY* ]] && unset "$name"; done
PATH=/usr/local/bin:/usr/bin:/bin
umask 022

say() {
  printf 'rx-build: %s\n' "$*"
}
fail() {
  say "failed: $*"
  exit 1
}
cleanup() {
  rm -rf "$build_dir/context" "$build_dir/tmp" "$build_dir/cache" "$build_dir/image.part.sif"
}
trap 'say "cancelled"; cleanup; exit 143' TERM INT
cd "$build_dir" || fail "cannot enter the build folder"
mkdir -p tmp cache || fail "cannot make the build's temporary folders"
# Pulled layers and temporary trees stay in this build's folder, which goes when it ends.
export APPTAINER_TMPDIR="$build_dir/tmp" APPTAINER_CACHEDIR="$build_dir/cache"
printf '%s' "$definition" | base64 -d >build.def || fail "cannot write the definition"
printf '%s' "$ignore" | base64 -d >build.ignore || fail "cannot write the exclusions"
[[ -d $context ]] || fail "the build context $context is not a folder"
say "copying the build context $context"
# .dockerignore rules: a pattern per line, '#' comments, '!' exceptions, the last rule that
# matches a path (or a folder above it) decides; "**" spans folders. Links are copied as links,
# never followed; FIFOs, sockets and devices are left out.
python3 -I -S - "$context" "$build_dir/context" "$build_dir/build.ignore" <<'PY' || fail "cannot copy the build context"
import os, re, shutil, stat, sys
src, dest, ignore_file = sys.argv[1:4]
def pattern(p):
    out, i = [], 0
    while i < len(p):
        if p.startswith("**/", i):
            out.append("(?:.*/)?"); i += 3; continue
        if p.startswith("**", i):
            out.append(".*"); i += 2; continue
        c = p[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "\\" and i + 1 < len(p):
            out.append(re.escape(p[i + 1])); i += 2; continue
        elif c == "[" and "]" in p[i + 1:]:
            j = p.index("]", i + 1)
            out.append("[" + p[i + 1:j].replace("\\", "\\\\") + "]"); i = j + 1; continue
        else:
            out.append(re.escape(c))
        i += 1
    try:
        return re.compile("".join(out) + "(?:/.*)?", re.S)
    except re.error:
        return re.compile(re.escape(p) + "(?:/.*)?", re.S)
rules = []
with open(ignore_file, encoding="utf-8") as f:
    for line in f:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        line = os.path.normpath(line.lstrip("!").strip().lstrip("/"))
        if line != ".":
            rules.append((pattern(line), keep))
def excluded(rel):
    out = False
    for rule, keep in rules:
        if rule.fullmatch(rel):
            out = not keep
    return out
os.mkdir(dest, 0o755)
copied = 0
for top, dirs, files in os.walk(src):
    rel_top = os.path.relpath(top, src)
    for name in sorted(dirs + files):
        rel = os.path.normpath(os.path.join(rel_top, name))
        if excluded(rel):
            continue
        here, there = os.path.join(top, name), os.path.join(dest, rel)
        info = os.lstat(here)
        os.makedirs(os.path.dirname(there), exist_ok=True)
        if stat.S_ISDIR(info.st_mode):
            os.makedirs(there, exist_ok=True)
        elif stat.S_ISLNK(info.st_mode):
            os.symlink(os.readlink(here), there)
        elif stat.S_ISREG(info.st_mode):
            shutil.copy2(here, there, follow_symlinks=False)
            copied += 1
print("rx-build: copied %d files" % copied)
PY
cd context || fail "cannot enter the copied context"
say "building from $(grep -m1 -i '^From:' ../build.def | cut -c1-200)"
args=(build --fakeroot)
# Only for a base image in a registry the admin listed in [pulls] plain_http.
[[ -n $no_https ]] && args+=("$no_https")
"$apptainer" "${args[@]}" "$build_dir/image.part.sif" "$build_dir/build.def" </dev/null
status=$?
if ((status != 0)); then
  cleanup
  fail "apptainer build exited with status $status"
fi
cd "$build_dir" && mv -f image.part.sif image.sif || fail "cannot keep the image"
cleanup
size=$(stat -c %s image.sif) && digest=$(sha256sum image.sif | cut -d ' ' -f 1) || fail "cannot measure the image"
say "succeeded size=$size sha256=$digest"
