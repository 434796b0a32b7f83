# discomy: compile through the farm. Puts the masquerade directory (links named gcc, cc, g++, c++,
# … to the static discomy-cc, bind-mounted from the build host) first on PATH, as the ccache and
# icecream packages do. mock runs rpmbuild as `bash --login -c …`, whose /etc/profile reads this
# file after setting PATH. Without the directory (no bind mount) nothing changes.
if [ -d /usr/libexec/discomy/bin ]; then
  case ":$PATH:" in
    *:/usr/libexec/discomy/bin:*) ;;
    *) PATH="/usr/libexec/discomy/bin:$PATH"; export PATH ;;
  esac
fi
