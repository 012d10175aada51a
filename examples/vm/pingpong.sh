# Ping-pong over one TCP connection between guest 0 (server) and guest 1 (client).
# Each side adds one to the number it receives and sends it back: guest 0 prints the odd
# numbers ("pong N"), guest 1 the even ones ("ping N"), up to ROUNDS. busybox alone: no
# Python in the guest. `nc -e` gives the script the socket as stdin and stdout; its stderr is
# still the workload's output, which the host collects.
export ROUNDS=240 PORT=7000
cat > /tmp/pong.sh <<'EOS'
while read n; do
  n=$((n + 1)); echo "pong $n" >&2; echo $n
  [ $n -ge $ROUNDS ] && exit 0
done
EOS
cat > /tmp/ping.sh <<'EOS'
touch /tmp/connected
echo 0
while read n; do
  n=$((n + 1)); echo "ping $n" >&2
  [ $n -ge $ROUNDS ] && exit 0
  sleep 0.2; echo $n
done
EOS
chmod +x /tmp/pong.sh /tmp/ping.sh
if [ "$RANK" = 0 ]; then
  nc -l -p $PORT -e /tmp/pong.sh
else
  until [ -e /tmp/connected ]; do
    nc 10.77.0.1 $PORT -e /tmp/ping.sh || sleep 1
  done
fi
echo "rank $RANK done"
