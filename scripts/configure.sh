#!/usr/bin/env bash
# Configures and starts discomy's roles on a host where scripts/install.sh (or the RPMs) put it.
# It owns: the variables it sets in /etc/discomy/{worker,agent,builder,coordinator}.env (other
# lines are kept), /etc/discomy/token, the fleet directories /var/lib/discomy/fleet and
# /var/lib/discomy/agent-fleet (a node's key and certificate, from `discomy-compilerd join`), /etc/discomy/builder.toml while it is the shipped example or
# one this script wrote, the list of roles in /var/lib/discomy/configure-state, and, without
# systemd, the daemons it started (pid files /run/discomy/ROLE.pid, logs /var/log/discomy/ROLE.log).
#
# Usage: configure.sh --role ROLE[,ROLE…] [--coordinator HOST[:PORT] | --farm NAME]
#                     [--token TOKEN | --token-file FILE] [options]
#        configure.sh --stop [--root DIR]
#   --role R          worker (donor host), agent (build host), builder (package builds), coordinator
#                     (one per farm); repeatable or comma-separated
#   --coordinator A   the coordinator's host[:port] (port 3634); workers join it, agents ask it,
#                     builders use its build queue API at http://HOST:3635
#                     (with the coordinator role too, give this host's own farm address here:
#                     without it the local worker and agent use 127.0.0.1:3634, and the coordinator
#                     would hand that loopback address to other hosts' agents)
#   --farm NAME       find the coordinator of farm NAME over mDNS instead (not for builders)
#   --token T         the farm token, written to /etc/discomy/token (mode 0640, group discomy);
#                     --token-file FILE copies it from FILE. Kept from an earlier run when omitted.
#                     A plain-token farm (a lab); the working fleet uses the flags below.
# The working fleet (mutual TLS with certificates of the farm CA; README "The working fleet"):
#   --fleet           with the coordinator role: the coordinator owns a CA in
#                     /var/lib/discomy/coordinator/fleet; this host's other roles are enrolled
#                     at once with its admin certificate
#   --join-token T    join the coordinator's fleet with this join token (or --join-token-file F);
#                     needs --coordinator and --ca. The host waits as pending until the operator
#                     approves (`discomy nodes approve`); run this again then, or wait here with
#                     --wait-approval SECS. Its worker and agent start once approved.
#   --ca FILE         the farm CA certificate (from the provisioning bundle)
#   --node-name N     this node's name in the fleet (default: the host name)
#   --organisation O, --contact C   who donates this host, carried into the join request
#   --api URL         the build queue API for a builder (default http://COORDINATOR-HOST:3635;
#                     https://… in a working fleet, whose coordinator serves HTTPS only)
#   --api-listen A    the coordinator's API address (default 0.0.0.0:3635)
#   --slots N         a worker's compile slots / a builder's builds at once
#   --socket-group G  the group that may use the agent's socket (default discomy; `everyone`)
#   --builder-name N  the builder's name (default: the host name)
#   --chroot N=DIR    a builder chroot named N (jobs' --chroot N) at DIR; repeatable
#   --el9-flags       install Rocky 9's rpm macros and hardening specs into each build's chroot
#   --nodeps          rpmbuild --nodeps in the chroots (chroots without an RPM database)
#   --smp-ncpus N     make -jN for builds through this host's agent (default 16)
#   --no-systemd      start the daemons directly (setsid), with the units' ExecStart= command
#                     lines, users and environment files: for hosts, chroots and network
#                     namespaces without systemd as PID 1. Default when PID 1 is not systemd.
#                     The units' sandboxing directives (ProtectSystem=, PrivateUsers=, …) need
#                     systemd and are not applied then.
#   --no-start        write the configuration only
#   --root DIR        write the configuration into an alternate root (implies --no-start)
#   --stop            stop (and with systemd, disable) every discomy service this host runs
# Values missing from the flags are asked for when stdin is a terminal; otherwise it refuses.
# Idempotent: with the same flags a second run changes nothing and leaves running daemons alone.
set -euo pipefail

prog=configure.sh
die() { echo "$prog: $*" >&2; exit 1; }
say() { echo "$prog: $*"; }

roles=() coordinator="" farm="" token="" token_file="" api="" api_listen="0.0.0.0:3635"
slots="" socket_group="" builder_name="" chroots=() el9=0 nodeps=0 smp_ncpus=16
no_systemd=0 no_start=0 root=/ stop=0
fleet=0 join_token="" join_token_file="" ca="" node_name="" organisation="" contact="" wait_approval=0
need() { [ $# -ge 2 ] || die "$1 needs a value"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --role) need "$@"; IFS=, read -ra r <<<"$2"; roles+=("${r[@]}"); shift 2 ;;
    --coordinator) need "$@"; coordinator=$2; shift 2 ;;
    --farm) need "$@"; farm=$2; shift 2 ;;
    --token) need "$@"; token=$2; shift 2 ;;
    --token-file) need "$@"; token_file=$2; shift 2 ;;
    --fleet) fleet=1; shift ;;
    --join-token) need "$@"; join_token=$2; shift 2 ;;
    --join-token-file) need "$@"; join_token_file=$2; shift 2 ;;
    --ca) need "$@"; ca=$2; shift 2 ;;
    --node-name) need "$@"; node_name=$2; shift 2 ;;
    --organisation) need "$@"; organisation=$2; shift 2 ;;
    --contact) need "$@"; contact=$2; shift 2 ;;
    --wait-approval) need "$@"; wait_approval=$2; shift 2 ;;
    --api) need "$@"; api=$2; shift 2 ;;
    --api-listen) need "$@"; api_listen=$2; shift 2 ;;
    --slots) need "$@"; slots=$2; shift 2 ;;
    --socket-group) need "$@"; socket_group=$2; shift 2 ;;
    --builder-name) need "$@"; builder_name=$2; shift 2 ;;
    --chroot) need "$@"; chroots+=("$2"); shift 2 ;;
    --el9-flags) el9=1; shift ;;
    --nodeps) nodeps=1; shift ;;
    --smp-ncpus) need "$@"; smp_ncpus=$2; shift 2 ;;
    --no-systemd) no_systemd=1; shift ;;
    --no-start) no_start=1; shift ;;
    --root) need "$@"; root=$2; shift 2 ;;
    --stop) stop=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (--help)" ;;
  esac
done
[ -d "$root" ] || die "--root $root: no such directory"
root=$(cd "$root" && pwd)
R=${root%/}
[ -z "$R" ] || no_start=1
etc=$R/etc/discomy
state=$R/var/lib/discomy/configure-state
units=$R/usr/lib/systemd/system
[ -d "$units" ] || units=$R/etc/systemd/system
if [ -d /run/systemd/system ] && [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ]; then
  systemd=1
else
  systemd=0
fi
[ "$no_systemd" = 0 ] || systemd=0

# ---------------------------------------------------------------- without systemd: the daemons
all_roles="coordinator worker agent builder"

# The pid of ROLE's daemon when it runs (its pid file names a live discomy process), else "".
running_pid() {
  local f=$R/run/discomy/$1.pid pid exe
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  case "$pid" in ''|*[!0-9]*) return 0 ;; esac
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null || true)
  case "$exe" in */discomy-compilerd|*/discomy-coordinator) echo "$pid" ;; esac
}

stop_role() {
  local role=$1 pid i
  pid=$(running_pid "$role")
  if [ -n "$pid" ]; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
      [ -d "/proc/$pid" ] || break
      sleep 0.1
    done
    [ ! -d "/proc/$pid" ] || kill -KILL "$pid" 2>/dev/null || true
    say "stopped $role (pid $pid)"
  fi
  rm -f "$R/run/discomy/$role.pid"
}

# A unit's setting (last one wins), with systemd's %-specifiers for the system manager expanded.
unit_setting() { # unit_setting UNIT_FILE KEY
  sed -n "s/^$2=//p" "$1" | tail -n1 |
    sed 's/%C/\/var\/cache/g; s/%S/\/var\/lib/g; s/%t/\/run/g; s/%L/\/var\/log/g; s/%%/%/g'
}

# Starts ROLE's daemon as its unit would: ExecStart= with $VAR expanded from its
# EnvironmentFile= and Environment=, as User=/Group=, with its Runtime/State/CacheDirectory=.
start_role() {
  local role=$1 unit=$units/discomy-$1.service line user group env=() word argv=() d mode
  [ -f "$unit" ] || die "$unit is missing: run scripts/install.sh first"
  user=$(unit_setting "$unit" User) group=$(unit_setting "$unit" Group)
  # The environment: Environment= lines, then the environment file (systemd's order).
  while IFS= read -r line; do
    env+=("$line")
  done < <(sed -n 's/^Environment=//p' "$unit" |
             sed 's/%C/\/var\/cache/g; s/%S/\/var\/lib/g; s/%t/\/run/g; s/%%/%/g')
  local envfile; envfile=$(unit_setting "$unit" EnvironmentFile); envfile=${envfile#-}
  if [ -n "$envfile" ] && [ -f "$envfile" ]; then
    while IFS= read -r line; do
      case "$line" in ''|'#'*|';'*) continue ;; esac
      [[ "$line" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || continue
      local k=${line%%=*} v=${line#*=}
      case "$v" in \"*\") v=${v#\"}; v=${v%\"} ;; \'*\') v=${v#\'}; v=${v%\'} ;; esac
      env+=("$k=$v")
    done <"$envfile"
  fi
  # ExecStart=: words; "$NAME" becomes the words of NAME's value, "${NAME}" its whole value.
  local exec; exec=$(unit_setting "$unit" ExecStart)
  lookup() { local e val=""; for e in "${env[@]}"; do [ "${e%%=*}" != "$1" ] || val=${e#*=}; done; printf '%s' "$val"; }
  for word in $exec; do
    # shellcheck disable=SC2016 # the unit's literal ${NAME}
    case "$word" in
      '${'*'}') argv+=("$(lookup "${word:2:${#word}-3}")") ;;
      '$'*) local expanded; expanded=$(lookup "${word:1}"); read -ra more <<<"$expanded"; argv+=("${more[@]}") ;;
      *) argv+=("$word") ;;
    esac
  done
  # Directories the unit asks systemd for, owned by its user.
  local owner=${user:-root}:${group:-${user:-root}}
  for d in $(unit_setting "$unit" RuntimeDirectory); do mkdir -p "/run/$d"; chown "$owner" "/run/$d"; done
  for d in $(unit_setting "$unit" StateDirectory); do mkdir -p "/var/lib/$d"; chown "$owner" "/var/lib/$d"; done
  for d in $(unit_setting "$unit" CacheDirectory); do mkdir -p "/var/cache/$d"; chown "$owner" "/var/cache/$d"; done
  mode=$(unit_setting "$unit" StateDirectoryMode)
  if [ -n "$mode" ]; then for d in $(unit_setting "$unit" StateDirectory); do chmod "$mode" "/var/lib/$d"; done; fi
  mkdir -p /run/discomy /var/log/discomy
  local as=()
  if [ -n "$user" ]; then
    # --init-groups: the user's groups in /etc/group, SupplementaryGroups= included.
    as=(setpriv --reuid "$user" --regid "${group:-$user}" --init-groups)
  fi
  local home=/root
  [ -z "$user" ] || home=$(getent passwd "$user" | cut -d: -f6)
  local umask_value; umask_value=$(unit_setting "$unit" UMask)
  (
    [ -z "$umask_value" ] || umask "$umask_value"
    cd /
    exec setsid "${as[@]}" env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      HOME="$home" LANG=C.UTF-8 "${env[@]}" "${argv[@]}" \
      </dev/null >>"/var/log/discomy/$role.log" 2>&1
  ) &
  local pid=$!
  echo "$pid" >"/run/discomy/$role.pid"
  sleep 0.3
  [ -d "/proc/$pid" ] || die "$role exited at once: see /var/log/discomy/$role.log:
$(tail -n 20 "/var/log/discomy/$role.log")"
  say "started $role (pid $pid): ${argv[*]}"
}

if [ "$stop" = 1 ]; then
  [ ${#roles[@]} = 0 ] || die "--stop takes no --role: it stops everything"
  if [ "$systemd" = 1 ] && [ -z "$R" ] && [ -f "$state" ]; then
    while read -r role; do
      systemctl disable --now "discomy-$role.service" && say "stopped and disabled discomy-$role.service"
    done <"$state"
  fi
  for role in $all_roles; do stop_role "$role"; done
  rm -f "$state"
  exit 0
fi

# ---------------------------------------------------------------- inputs
ask() { # ask VAR PROMPT: only on a terminal
  [ -t 0 ] || return 0
  local answer; read -rp "$2: " answer; printf -v "$1" '%s' "$answer"
}
if [ ${#roles[@]} = 0 ]; then
  ask answer "Roles of this host (worker, agent, builder, coordinator; comma-separated)"
  IFS=, read -ra roles <<<"${answer:-}"
fi
[ ${#roles[@]} -gt 0 ] || die "no --role given (worker, agent, builder, coordinator)"
declare -A has=()
for role in "${roles[@]}"; do
  role=${role// /}
  case "$role" in
    worker|agent|builder|coordinator) has[$role]=1 ;;
    *) die "unknown role '$role': worker, agent, builder or coordinator" ;;
  esac
done
if [ -z "$coordinator" ] && [ -z "$farm" ] && [ -z "${has[coordinator]:-}" ]; then
  ask coordinator "The coordinator's host[:port] (empty: find farm by name over mDNS)"
  [ -n "$coordinator" ] || ask farm "The farm's name"
  [ -n "$coordinator" ] || [ -n "$farm" ] || die "give --coordinator HOST[:PORT] or --farm NAME"
fi
[ -z "$coordinator" ] || [ -z "$farm" ] || die "--coordinator and --farm exclude each other"
if [ -n "$coordinator" ]; then
  [[ "$coordinator" =~ ^([A-Za-z0-9]([A-Za-z0-9.-]{0,252})|\[[0-9A-Fa-f:]+\])(:([0-9]{1,5}))?$ ]] ||
    die "--coordinator '$coordinator': expected HOST[:PORT]"
  port=${BASH_REMATCH[4]:-3634}
  if [ "$port" -lt 1 ] || [ "$port" -gt 65535 ]; then die "--coordinator: port $port out of range"; fi
  coord_host=${BASH_REMATCH[1]}
fi
if [ -n "$farm" ]; then
  [[ "$farm" =~ ^[A-Za-z0-9._-]{1,64}$ ]] || die "--farm '$farm': letters, digits, '.', '_', '-' (1-64)"
fi
[[ "$api_listen" =~ ^([0-9.]+|\[[0-9A-Fa-f:]+\]):[0-9]{1,5}$ ]] || die "--api-listen '$api_listen': expected IP:PORT"
if [ -n "$slots" ]; then [[ "$slots" =~ ^[1-9][0-9]{0,3}$ ]] || die "--slots '$slots': a positive number"; fi
[[ "$smp_ncpus" =~ ^[1-9][0-9]{0,3}$ ]] || die "--smp-ncpus '$smp_ncpus': a positive number"
if [ -n "$socket_group" ]; then
  [[ "$socket_group" =~ ^[a-z_][a-z0-9_-]{0,31}$ ]] || die "--socket-group '$socket_group': not a group name"
fi
[ -n "$builder_name" ] || builder_name=$(hostname -s 2>/dev/null || echo builder)
if [ -n "$join_token_file" ]; then
  [ -r "$join_token_file" ] || die "--join-token-file $join_token_file: not readable"
  join_token=$(head -n1 "$join_token_file")
fi
if [ "$fleet" = 1 ]; then
  [ -n "${has[coordinator]:-}" ] || die "--fleet goes with the coordinator role (other hosts: --join-token)"
  [ -z "$join_token" ] || die "--fleet and --join-token exclude each other"
fi
if [ -n "$join_token" ]; then
  [ -n "$coordinator" ] || die "--join-token needs --coordinator HOST[:PORT]"
  if [ -z "$ca" ] || [ ! -r "$ca" ]; then die "--join-token needs --ca FILE, the farm CA certificate"; fi
  [ -z "$R" ] || die "--join-token joins from the host itself: not with --root"
  [[ "$join_token" =~ ^[0-9a-f]{1,32}\.[0-9a-f]{1,64}$ ]] || die "--join-token: expected ID.SECRET"
fi
[ -n "$node_name" ] || node_name=$(hostname -s 2>/dev/null || echo node)
[[ "$node_name" =~ ^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$ ]] || die "--node-name '$node_name': letters, digits, '.', '_', '-'"
for v in "$organisation" "$contact"; do
  [[ "$v" =~ ^[A-Za-z0-9\ .,@_+:/-]{0,128}$ ]] || die "--organisation/--contact '$v': letters, digits, spaces, .,@_+:/-"
done
[[ "$wait_approval" =~ ^[0-9]{1,6}$ ]] || die "--wait-approval '$wait_approval': seconds"
# The fleet's directories: the worker's (root) and a copy for the agent (its own user).
fleet_dir=/var/lib/discomy/fleet agent_fleet_dir=/var/lib/discomy/agent-fleet
coord_fleet_dir=/var/lib/discomy/coordinator/fleet
in_fleet=0
if [ -n "$join_token" ] || [ "$fleet" = 1 ] || [ -s "$R$fleet_dir/node.pem" ]; then in_fleet=1; fi
[[ "$builder_name" =~ ^[A-Za-z0-9._-]{1,64}$ ]] || die "--builder-name '$builder_name': letters, digits, '.', '_', '-'"
for c in "${chroots[@]}"; do
  [[ "$c" =~ ^[A-Za-z0-9._-]{1,64}=/[^\"[:space:]]*$ ]] || die "--chroot '$c': expected NAME=/ABSOLUTE/DIR"
  [ -x "$R${c#*=}/usr/bin/rpmbuild" ] || say "warning: ${c#*=} has no usr/bin/rpmbuild"
done
if [ -n "${has[builder]:-}" ]; then
  if [ -z "$api" ]; then
    # A working fleet's coordinator serves its API over HTTPS only (its certificate names its
    # addresses, localhost and its host name; the builder trusts the farm CA, ca_file below).
    scheme=http
    [ "$in_fleet" = 0 ] || scheme=https
    if [ -n "${has[coordinator]:-}" ] && [ -z "$coordinator" ]; then
      api=$scheme://127.0.0.1:${api_listen##*:}
    elif [ -n "$coordinator" ]; then
      api=$scheme://$coord_host:3635
    else
      die "a builder needs the coordinator's address (--coordinator HOST or --api URL)"
    fi
  fi
  [[ "$api" =~ ^https?://[^[:space:]\"/]+$ ]] || die "--api '$api': expected http://HOST:PORT"
  [ ${#chroots[@]} -gt 0 ] || grep -q '^\[\[chroot\]\]' "$etc/builder.toml" 2>/dev/null ||
    die "a builder needs at least one --chroot NAME=DIR"
fi
[ -d "$etc" ] || die "$etc does not exist: run scripts/install.sh first"

# ---------------------------------------------------------------- writing the configuration
changed_roles=" "
write_if_changed() { # write_if_changed FILE MODE ROLE… < content
  local file=$1 mode=$2 tmp; shift 2
  tmp=$(mktemp "$file.XXXXXX")
  cat >"$tmp"
  if [ -f "$file" ] && cmp -s "$tmp" "$file"; then rm -f "$tmp"; return 0; fi
  chmod "$mode" "$tmp"; mv -f "$tmp" "$file"
  say "wrote ${file#"$R"}"
  changed_roles+="$* "
}

# Sets NAME=VALUE in an environment file: replaces the NAME= line (or its commented #NAME=
# example, the first one), appends otherwise; "" removes an active NAME= line.
set_var() { # set_var FILE NAME VALUE ROLE
  local file=$1 name=$2 value=$3 role=$4
  [ -f "$file" ] || : >"$file"
  awk -v n="$name" -v v="$value" '
    $0 ~ "^" n "=" { if (!done && v != "") out[++c] = n "=" v; done = 1; next }
    { out[++c] = $0; if (!example && $0 ~ "^#" n "=") example = c }
    END {
      for (i = 1; i <= c; i++) {
        print out[i]
        if (i == example && !done && v != "") { print n "=" v; done = 1 }
      }
      if (!done && v != "") print n "=" v
    }' "$file" | write_if_changed "$file" 0644 "$role"
}

if [ -n "$token_file" ]; then
  [ -r "$token_file" ] || die "--token-file $token_file: not readable"
  token=$(head -n1 "$token_file")
fi
if [ -z "$token" ] && [ ! -s "$etc/token" ]; then
  ask token "The farm token (empty: none, loopback peers only)"
fi
if [ -n "$token" ]; then
  case "$token" in *[[:space:]]*) die "the token holds whitespace" ;; esac
  [ ${#token} -ge 8 ] || die "the token is shorter than 8 characters"
  gid=$(awk -F: '$1 == "discomy" { print $3 }' "$R/etc/group" 2>/dev/null || true)
  printf '%s\n' "$token" | write_if_changed "$etc/token" 0640 "${!has[@]}"
  [ -z "$gid" ] || chgrp "$gid" "$etc/token"
fi
token_args=""
[ ! -s "$etc/token" ] || token_args="--token-file /etc/discomy/token"
where=$coordinator$farm

if [ -n "${has[coordinator]:-}" ]; then
  f=$etc/coordinator.env
  set_var "$f" DISCOMY_FARM "$farm" coordinator
  set_var "$f" DISCOMY_FLEET_DIR "$([ "$fleet" = 0 ] || echo "$coord_fleet_dir")" coordinator
  set_var "$f" DISCOMY_COORDINATOR_ARGS \
    "--state-dir /var/lib/discomy/coordinator --api-listen $api_listen${token_args:+ $token_args}" coordinator
fi
# Where a worker or an agent finds the farm: the coordinator or farm given, else the
# coordinator configured on this same host.
set_coordinator() {
  if [ -n "$where" ]; then
    set_var "$1" DISCOMY_COORDINATOR "$coordinator" "$2"
    set_var "$1" DISCOMY_FARM "$farm" "$2"
  elif [ -n "${has[coordinator]:-}" ]; then
    set_var "$1" DISCOMY_COORDINATOR 127.0.0.1:3634 "$2"
  fi
}
if [ -n "${has[worker]:-}" ]; then
  f=$etc/worker.env
  set_coordinator "$f" worker
  set_var "$f" DISCOMY_FLEET_DIR "$([ "$in_fleet" = 0 ] || echo "$fleet_dir")" worker
  args="$token_args${slots:+ --slots $slots}"
  set_var "$f" DISCOMY_WORKER_ARGS "${args# }" worker
fi
if [ -n "${has[agent]:-}" ]; then
  f=$etc/agent.env
  set_coordinator "$f" agent
  set_var "$f" DISCOMY_FLEET_DIR "$([ "$in_fleet" = 0 ] || echo "$agent_fleet_dir")" agent
  args="$token_args --socket-group ${socket_group:-discomy}"
  set_var "$f" DISCOMY_AGENT_ARGS "${args# }" agent
fi
if [ -n "${has[builder]:-}" ]; then
  f=$etc/builder.toml
  marker="# Written by configure.sh; edit it freely (configure.sh then leaves it alone)."
  pristine=0
  if [ ! -f "$f" ] || ! grep -qv '^#\|^[[:space:]]*$' "$f"; then pristine=1; fi
  if [ "$pristine" = 1 ] || [ "$(head -n1 "$f")" = "$marker" ]; then
    {
      echo "$marker"
      echo "# scripts/configure.sh --role ${!has[*]}; the format: README (\"The build queue\")."
      echo "name = \"$builder_name\""
      echo "api = \"$api\""
      [ ! -s "$etc/token" ] || echo 'token_file = "/etc/discomy/token"'
      [ "$in_fleet" = 0 ] || echo "ca_file = \"$fleet_dir/ca.pem\""
      echo 'work_dir = "/var/lib/discomy/builder"'
      echo "slots = ${slots:-1}"
      if [ -n "${has[agent]:-}" ]; then
        printf '\n[farm]\nsocket_dir = "/run/discomy"\nlibexec_dir = "/usr/libexec/discomy"\n'
        echo "smp_ncpus = $smp_ncpus"
      fi
      for c in "${chroots[@]}"; do
        printf '\n[[chroot]]\nname = "%s"\nroot = "%s"\n' "${c%%=*}" "${c#*=}"
        [ "$nodeps" = 0 ] || echo "nodeps = true"
        if [ "$el9" = 1 ]; then
          echo "[chroot.install]"
          echo '"/etc/rpm/macros.el9" = "/usr/share/discomy/el9/macros.el9"'
          echo '"/etc/rpmrc" = "/usr/share/discomy/el9/rpmrc"'
          echo '"/usr/lib/rpm/redhat/redhat-hardened-cc1" = "/usr/share/discomy/el9/redhat-hardened-cc1"'
          echo '"/usr/lib/rpm/redhat/redhat-hardened-ld" = "/usr/share/discomy/el9/redhat-hardened-ld"'
        fi
      done
    } | write_if_changed "$f" 0640 builder
    gid=$(awk -F: '$1 == "discomy" { print $3 }' "$R/etc/group" 2>/dev/null || true)
    [ -z "$gid" ] || chgrp "$gid" "$f"
  else
    say "left $f alone (edited by hand): its settings are yours"
  fi
fi

mkdir -p "$(dirname "$state")"
printf '%s\n' "${!has[@]}" | sort | write_if_changed "$state" 0644 state

# ---------------------------------------------------------------- starting
if [ "$no_start" = 1 ]; then
  say "configuration written in $root; not starting anything (--no-start or --root)"
  exit 0
fi
order="coordinator worker agent builder"
# Roles configured earlier but not now stop.
for role in $all_roles; do
  [ -z "${has[$role]:-}" ] || continue
  if [ "$systemd" = 1 ]; then
    if systemctl is-enabled --quiet "discomy-$role.service" 2>/dev/null; then
      systemctl disable --now "discomy-$role.service"; say "stopped discomy-$role.service (not a role any more)"
    fi
  else
    stop_role "$role"
  fi
done
# Joins the fleet (once: a certificate already there is kept and renews itself). Prints the join
# command's JSON outcome.
join_fleet() { # join_fleet COORDINATOR CA TOKEN WAIT
  local roles=() r
  for r in worker agent builder; do [ -z "${has[$r]:-}" ] || roles+=("$r"); done
  local wait_args=(--no-wait)
  [ "$4" = 0 ] || wait_args=(--wait "$4")
  mkdir -p "$fleet_dir"
  chmod 0700 "$fleet_dir"
  DISCOMY_JOIN_TOKEN=$3 discomy-compilerd --coordinator "$1" --fleet-dir "$fleet_dir" join \
    --ca "$2" --name "$node_name" --roles "$(IFS=,; echo "${roles[*]}")" \
    --organisation "$organisation" --contact "$contact" "${wait_args[@]}"
}
json_field() { sed -n "s/.*\"$1\":\"\{0,1\}\([^\",}]*\).*/\1/p"; }
# The agent runs as its own user: it gets its own copy of the node's key and certificate (each
# copy renews on its own).
agent_copy() {
  [ -n "${has[agent]:-}" ] && [ -s "$fleet_dir/node.pem" ] || return 0
  [ ! -s "$agent_fleet_dir/node.pem" ] || return 0
  install -d -m 0700 -o discomy -g discomy "$agent_fleet_dir" 2>/dev/null || install -d -m 0700 "$agent_fleet_dir"
  local f
  for f in ca.pem node.pem node.key; do
    install -m 0600 "$fleet_dir/$f" "$agent_fleet_dir/$f"
    chown discomy:discomy "$agent_fleet_dir/$f" 2>/dev/null || true
  done
  chown discomy:discomy "$agent_fleet_dir" 2>/dev/null || true
}
# After the coordinator: this host's own node, when it is in the fleet.
enrol() {
  [ "$in_fleet" = 1 ] || return 0
  local others=0 r
  for r in worker agent builder; do [ -z "${has[$r]:-}" ] || others=1; done
  [ "$others" = 1 ] || return 0
  if [ ! -s "$fleet_dir/node.pem" ]; then
    if [ "$fleet" = 1 ]; then
      # The coordinator's own host: the operator running this holds its admin certificate.
      local local_coord=127.0.0.1:3634 i out request t
      for ((i = 0; i < 200; i++)); do [ -s "$coord_fleet_dir/admin.pem" ] && break; sleep 0.1; done
      [ -s "$coord_fleet_dir/admin.pem" ] || die "the coordinator made no $coord_fleet_dir/admin.pem"
      t=""
      for ((i = 0; i < 50; i++)); do
        t=$(discomy nodes --coordinator "$local_coord" --fleet-dir "$coord_fleet_dir" --json token --uses 1 --ttl 600 2>/dev/null | json_field token) || true
        [ -z "$t" ] || break
        sleep 0.2
      done
      [ -n "$t" ] || die "the local coordinator made no join token"
      out=$(join_fleet "$local_coord" "$coord_fleet_dir/ca.pem" "$t" 0)
      request=$(printf '%s' "$out" | json_field request)
      discomy nodes --coordinator "$local_coord" --fleet-dir "$coord_fleet_dir" approve "$request" >/dev/null
      join_fleet "$local_coord" "$coord_fleet_dir/ca.pem" "$t" 30 >/dev/null
      say "enrolled this host's node $node_name (request $request) with the local admin certificate"
    else
      local out state request
      out=$(join_fleet "$coordinator" "$ca" "$join_token" "$wait_approval") ||
        die "joining the fleet at $coordinator failed (see above)"
      state=$(printf '%s' "$out" | json_field state)
      request=$(printf '%s' "$out" | json_field request)
      if [ "$state" != approved ]; then
        say "pending: join request $request of node $node_name waits for the operator (discomy nodes approve $request); run this again then"
      else
        say "joined the fleet as $node_name (request $request)"
      fi
    fi
  fi
  agent_copy
}
for role in $order; do
  [ -n "${has[$role]:-}" ] || continue
  if [ "$role" != coordinator ] && [ "$in_fleet" = 1 ] && [ -z "${enrolled:-}" ]; then
    enrolled=1
    enrol
  fi
  if [ "$in_fleet" = 1 ] && { [ "$role" = worker ] || [ "$role" = agent ]; } && [ ! -s "$fleet_dir/node.pem" ]; then
    say "$role not started: this node is not approved yet"
    continue
  fi
  if [ "$systemd" = 1 ]; then
    systemctl daemon-reload
    if [[ "$changed_roles" == *" $role "* ]] && systemctl is-active --quiet "discomy-$role.service"; then
      systemctl restart "discomy-$role.service"; say "restarted discomy-$role.service"
    elif ! systemctl is-active --quiet "discomy-$role.service" || ! systemctl is-enabled --quiet "discomy-$role.service"; then
      systemctl enable --now "discomy-$role.service"; say "enabled and started discomy-$role.service"
    else
      say "discomy-$role.service runs, unchanged"
    fi
  else
    pid=$(running_pid "$role")
    if [ -n "$pid" ] && [[ "$changed_roles" != *" $role "* ]]; then
      say "$role runs (pid $pid), unchanged"
      continue
    fi
    [ -z "$pid" ] || stop_role "$role"
    start_role "$role"
  fi
done
