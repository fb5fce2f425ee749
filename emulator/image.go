package emulator

import (
	"bytes"
	"crypto/sha256"
	"image"
	"image/color"
	"image/png"
	"math"
	"math/rand/v2"
)

// Image answers: real, decodable PNGs of about the size real image models give.
const (
	// DefaultImageBytes is the size of an image answer when Options.ImageBytes is zero:
	// about 1.5 MB, as the images of the real image models run.
	DefaultImageBytes = 1_500_000
	// MaxImageBytes caps the size an image directive may ask for.
	MaxImageBytes = 64 << 20
	// imageTokens is what the service counts for one generated image (1024x1024 and below).
	imageTokens = 1290
)

// ImageSide is the width and height of the square PNG the emulator answers when asked for an
// image of about size bytes: round(sqrt(size/3)), at least 1. The PNG is 8-bit RGB stored
// without compression, so it encodes to size bytes give or take a row and the chunk headers.
func ImageSide(size int) int {
	return max(1, int(math.Round(math.Sqrt(float64(size)/3))))
}

// ExpectedImage is the PNG the emulator answers for prompt text when asked for an image of
// about size bytes: a gradient in colours drawn from the text, under noise from a PRNG seeded
// by the text's SHA-256, so that the same prompt always gets the same picture.
func ExpectedImage(text string, size int) []byte {
	side := ImageSide(size)
	seed := sha256.Sum256([]byte(text))
	rng := rand.NewChaCha8(seed)
	img := image.NewRGBA(image.Rect(0, 0, side, side))
	from, to := color.RGBA{seed[0], seed[1], seed[2], 255}, color.RGBA{seed[3], seed[4], seed[5], 255}
	var noise uint64
	for y := range side {
		row := img.Pix[y*img.Stride : y*img.Stride+side*4]
		for x := range side {
			if x%2 == 0 {
				noise = rng.Uint64()
			}
			n := noise >> (32 * (x % 2))
			t := float64(x+y) / float64(2*side)
			p := row[x*4 : x*4+4]
			p[0] = mix(from.R, to.R, t, uint8(n))
			p[1] = mix(from.G, to.G, t, uint8(n>>8))
			p[2] = mix(from.B, to.B, t, uint8(n>>16))
			p[3] = 255
		}
	}
	var buf bytes.Buffer
	buf.Grow(side*(3*side+1) + 1024)
	enc := png.Encoder{CompressionLevel: png.NoCompression} // noise would not compress anyway
	if err := enc.Encode(&buf, img); err != nil {
		panic("emulator: encoding a PNG into memory failed: " + err.Error()) // not reached
	}
	return buf.Bytes()
}

// mix blends a into b by t and adds noise of up to ±32.
func mix(a, b uint8, t float64, noise uint8) uint8 {
	v := float64(a)*(1-t) + float64(b)*t + float64(int(noise)%65-32)
	return uint8(min(max(v, 0), 255))
}
