// Package faulttest holds gembatch's crash and fault tests: the real gembatchd binary run as a
// subprocess against in-process NATS (one server, or a cluster of three at three replicas) and
// the emulator, killed or frozen at each step boundary of a batch's life, resumed past its lease
// with a second replica running, its clock skewed, cut off from NATS and flooded with API errors.
//
// The proof can fail: replies are counted at every delivery (a core subscription, no duplicate
// window), billing is the emulator's count per request across all jobs, and the tokens gembatchd
// counts are compared with the tokens billed.
//
// GEMBATCH_FAULT_TRIALS sets the campaign's number of trials (default 36: every step boundary
// with both kinds of fault twice, plus a kill while accumulating and a skewed pair); 200 is the
// long mode (go test -timeout 30m). GEMBATCH_FAULT_SEED replays a campaign; GEMBATCH_FAULT_ONLY
// (step:action[,...], e.g. mid-reply:kill) runs only those faults; GEMBATCH_FAULT_LOGS=1
// prints the daemons' logs of a breached trial (=all: of every trial); GEMBATCH_FAULT_REPORT
// names a file each test appends its figures to.
package faulttest
