# The test VM has no way out: qemu gives it no network card (`-nic none`),
# so no network controller on its PCI bus and no interface but lo. Remote
# clients are simulated inside it, with veth pairs between namespaces.
set -u
fail() { echo "FAIL: $*"; exit 1; }
nics=""
for d in /sys/bus/pci/devices/*; do
    case $(cat $d/class) in 0x02*) nics="$nics ${d##*/}" ;; esac
done
echo "network controllers on the PCI bus:${nics:- none}"
echo "interfaces: $(ls /sys/class/net | tr '\n' ' ')"
[ -z "$nics" ] || fail "the guest has a network card:$nics"
[ "$(ls /sys/class/net)" = lo ] || fail "an interface besides lo"
echo "scenario: vm-isolated ok"
