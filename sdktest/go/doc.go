// Package sdktest drives the gemini emulator with the official Go SDK, google.golang.org/genai,
// as users would in their own tests. It is a module of its own so that the SDK and its
// dependencies stay out of gembatch's go.mod; sdktest/run runs it with the JavaScript SDK's test.
package sdktest
