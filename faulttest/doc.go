// Package faulttest holds gembatch's crash and fault tests: the real gembatchd binary run as a
// subprocess against an in-process NATS server (JetStream on disk) and the emulator, killed at
// each step of a batch's life, paused past its lease, cut off from NATS and flooded with API
// errors, with a ledger of every request sent and every reply received.
//
// GEMBATCH_FAULT_TRIALS sets the number of crash trials (default 21, three per step);
// GEMBATCH_FAULT_REPORT names a file each test appends its figures to.
package faulttest
