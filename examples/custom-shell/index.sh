# The function of the custom-shell example, loaded by ./bootstrap.
#
# main_handler EVENT REQUEST_ID prints its result (JSON) on stdout and log lines on stderr; a
# non-zero status fails the invocation, with what it printed as the error message.
main_handler() {
  local event="$1" request_id="$2"
  echo "custom-shell: handling ${request_id}" >&2
  case "$event" in
    *'"fail"'*)
      echo "the event asked to fail"
      return 1
      ;;
  esac
  printf '{"runtime":"custom-shell","request_id":"%s","event":%s}' "$request_id" "$event"
}
