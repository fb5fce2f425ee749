// Package emulator is a local stand-in for the Gemini Batch API and File API.
//
// A [Server] is an http.Handler that speaks the REST wire as the service carries it
// (shared/gemini-batch-api.md): BATCH_STATE_* states, int64 counts as strings, zero counts left
// out, google.rpc.Status errors, results inline or in a JSONL result file named
// files/batch-<id> that files.get refuses. It exists so that the daemon's tests, its demo and its
// users' own tests can run without the real service.
//
// Jobs advance by time alone: a job is PENDING for the first half of [Options.JobDelay], RUNNING
// for the second half, then SUCCEEDED. State is computed when a job is read, so no goroutine or
// timer runs per job. Results are made on the first read after the job has ended with any.
//
// Answers are deterministic: a generate request is answered with [ExpectedText] and an embed
// request with [ExpectedEmbedding], so tests can check replies. A request whose text contains
// the directive [[emulator:error=N]] (N a gRPC code from 1 to 16) fails as a per-item error with
// code N; with [[emulator:error=N,times=K]] only the first K answers to that text fail. A
// request that is not a valid GenerateContentRequest or EmbedContentRequest fails with per-item
// error 3 INVALID_ARGUMENT, as the service does. [Faults] inject the trouble that users of the
// real service meet: throttled creates, failing polls, lost create answers, interrupted uploads,
// stuck and expired jobs, out-of-order results, partial results of jobs that expire or are
// cancelled, and the quotas on active jobs and enqueued tokens.
//
// Uploads and result files live in a temporary directory that [Server.Close] removes; they are
// streamed to and from disk, never held whole in memory.
package emulator
