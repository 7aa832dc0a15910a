# Shared by the bin/ scripts: where things are, how to say things, how to install a package.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${GANTRY_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1

say() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31mgantry:\033[0m %s\n' "$*" >&2; exit 1; }

# Run as root directly, through sudo where that works without a prompt, else say what to run.
as_root() {
  if [ "$(id -u)" = 0 ]; then "$@";
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo "$@";
  else die "needs root to run: $* — run it yourself once, then re-run this command."; fi
}

apt_install() {
  command -v apt-get >/dev/null || die "cannot install $* automatically (no apt-get); install it and re-run."
  say "installing Debian packages: $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
    || { as_root apt-get update -qq >/dev/null && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null; } \
    || die "apt-get could not install $*."
}

tcp_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# pip, without the local mirror's "is ignored" noise.
pip_quiet() { "$VENV/bin/pip" -q "$@" 2> >(grep -v "is ignored: it is neither" >&2); }

# pip install a requirements file once per content: a stamp in the venv remembers what was installed.
pip_sync() {
  local req="$1" stamp
  stamp="$VENV/.gantry-$(basename "$req").sha256"
  local want; want="$(cat "$ROOT/$req" "$ROOT"/requirements.txt | sha256sum | cut -d' ' -f1)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return 0; fi
  say "installing $req into .venv"
  pip_quiet install -r "$ROOT/$req" || die "pip could not install $req (see above)."
  echo "$want" >"$stamp"
}
