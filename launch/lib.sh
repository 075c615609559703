# shellcheck shell=bash
# Shared by the launch scripts (sourced, not run): errors, option values, and `run`, which prints a
# command as `+ <command>` (quoted like Python's shlex.join, so the line can be pasted back into a
# shell) and, unless DRY_RUN=1, runs it.

DRY_RUN=${DRY_RUN:-0}

die() {  # one clear sentence, exit status 2 (a usage error)
  printf '%s: %s\n' "$PROG" "$*" >&2
  exit 2
}

require() {  # require VALUE WHAT FLAG ENV
  [[ -n $1 ]] || die "no $2: pass $3 or set $4"
}

value_of() {  # value_of "$@" (at a flag): the flag's value, or an error when there is none
  (($# >= 2)) || die "$1 needs a value"
  printf '%s' "$2"
}

is_true() {  # 1/true/yes/on (any case) are true; "", 0/false/no/off are false; anything else is an error
  case $1 in
    1 | [Tt][Rr][Uu][Ee] | [Yy][Ee][Ss] | [Oo][Nn]) return 0 ;;
    "" | 0 | [Ff][Aa][Ll][Ss][Ee] | [Nn][Oo] | [Oo][Ff][Ff]) return 1 ;;
    *) die "$2=$1: expected 1 or 0" ;;
  esac
}

is_count() {  # a positive integer
  [[ $1 =~ ^[1-9][0-9]*$ ]]
}

quote() {  # one argument, quoted only when it needs it (Python's shlex.quote)
  local safe='^[A-Za-z0-9_@%+=:,./-]+$'
  if [[ $1 =~ $safe ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\"\'\"\'}"
  fi
}

shell_join() {  # the arguments as one shell command line (Python's shlex.join)
  local out="" arg
  for arg in "$@"; do
    out+="${out:+ }$(quote "$arg")"
  done
  printf '%s' "$out"
}

run() {  # print the command; run it unless this is a dry run
  if ((DRY_RUN)); then
    printf '+ %s\n' "$(shell_join "$@")"
    return 0
  fi
  printf '+ %s\n' "$(shell_join "$@")" >&2
  "$@"
}

default_python() {  # the README's .venv when it exists, else python3 from PATH
  if [[ -x $1/.venv/bin/python ]]; then
    printf '%s' "$1/.venv/bin/python"
  else
    printf python3
  fi
}
