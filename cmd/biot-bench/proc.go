package main

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clockTick is the unit of utime and stime in /proc/<pid>/stat (USER_HZ, 100
// on every Linux this runs on).
const clockTick = 10 * time.Millisecond

// cpuSample is CPU time (user + system) used so far by the three processes
// that share the machine during a run, and by the whole machine (busy and
// idle, summed over CPUs), so that load from other processes shows.
type cpuSample struct {
	vault, plugin, self time.Duration
	busy, idle          time.Duration
}

func (a cpuSample) sub(b cpuSample) cpuSample {
	return cpuSample{a.vault - b.vault, a.plugin - b.plugin, a.self - b.self, a.busy - b.busy, a.idle - b.idle}
}

func (a cpuSample) add(b cpuSample) cpuSample {
	return cpuSample{a.vault + b.vault, a.plugin + b.plugin, a.self + b.self, a.busy + b.busy, a.idle + b.idle}
}

// others is the CPU time used by processes outside the benchmark.
func (a cpuSample) others() time.Duration {
	return max(0, a.busy-a.vault-a.plugin-a.self)
}

// share is d as a percentage of the machine's CPU time in the sample.
func (a cpuSample) share(d time.Duration) string {
	total := a.busy + a.idle
	if total <= 0 {
		return "-"
	}
	return strconv.FormatFloat(100*float64(d)/float64(total), 'f', 0, 64) + "%"
}

// cpuProbe reads the CPU time of Vault, the plugin and this program.
type cpuProbe struct {
	vaultPID, pluginPID int
}

func (p *cpuProbe) sample() cpuSample {
	if p == nil {
		return cpuSample{}
	}
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	self := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	busy, idle := machineCPU()
	return cpuSample{vault: procCPU(p.vaultPID), plugin: procCPU(p.pluginPID), self: self, busy: busy, idle: idle}
}

// machineCPU is the busy and idle time of all CPUs, from /proc/stat.
func machineCPU() (busy, idle time.Duration) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	if !sc.Scan() {
		return 0, 0
	}
	// cpu  user nice system idle iowait irq softirq steal guest guest_nice
	fs := strings.Fields(sc.Text())
	if len(fs) < 9 || fs[0] != "cpu" {
		return 0, 0
	}
	var v [8]int64
	for i := range v {
		v[i], _ = strconv.ParseInt(fs[i+1], 10, 64)
	}
	busy = time.Duration(v[0]+v[1]+v[2]+v[5]+v[6]+v[7]) * clockTick
	idle = time.Duration(v[3]+v[4]) * clockTick
	return busy, idle
}

// procCPU is utime+stime of pid from /proc/<pid>/stat, 0 if unreadable.
func procCPU(pid int) time.Duration {
	if pid <= 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * clockTick
}

// rssKiB is VmRSS of pid in KiB, 0 if unreadable.
func rssKiB(pid int) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			fs := strings.Fields(rest)
			if len(fs) > 0 {
				n, _ := strconv.ParseInt(fs[0], 10, 64)
				return n
			}
		}
	}
	return 0
}

func fmtKiB(k int64) string { return strconv.FormatFloat(float64(k)/1024, 'f', 1, 64) + " MiB" }

// pidOfExe finds the running process whose executable is exe, 0 if none.
func pidOfExe(exe string) int {
	want, err := filepath.EvalSymlinks(exe)
	if err != nil {
		want = exe
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		got, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe"))
		if err == nil && got == want {
			return pid
		}
	}
	return 0
}
