package segpress

import (
	"encoding/binary"
	"fmt"
	"math"

	pb "github.com/segpress/segpress/clients/go/segpressv1"
)

// Rows decodes a soft-token tensor (shape [rows, hidden], little-endian
// row-major FLOAT32, FLOAT16 or BFLOAT16 elements) into float32 rows.
func Rows(t *pb.Tensor) ([][]float32, error) {
	l, err := layoutOf(t)
	if err != nil {
		return nil, err
	}
	return l.decode(t.GetData(), 0, l.rows), nil
}

// layout is what decoding a checked tensor needs.
type layout struct {
	rows, hidden, size int
	element            func([]byte) float32
}

// layoutOf checks the tensor's shape, dtype and data length.
func layoutOf(t *pb.Tensor) (layout, error) {
	shape := t.GetShape()
	if len(shape) != 2 || shape[0] < 0 || shape[1] < 0 {
		return layout{}, fmt.Errorf("segpress: tensor shape %v is not [rows, hidden]", shape)
	}
	size, element := elementDecoder(t.GetDtype())
	if element == nil {
		return layout{}, fmt.Errorf("segpress: unsupported tensor dtype %v", t.GetDtype())
	}
	l := layout{int(shape[0]), int(shape[1]), size, element}
	if len(t.GetData()) != l.rows*l.hidden*size {
		return layout{}, fmt.Errorf("segpress: tensor data has %d bytes, shape %v of %v needs %d",
			len(t.GetData()), shape, t.GetDtype(), l.rows*l.hidden*size)
	}
	return l, nil
}

// decode returns rows [start, end) of data as float32 rows.
func (l layout) decode(data []byte, start, end int) [][]float32 {
	out := make([][]float32, end-start)
	for r := range out {
		out[r] = make([]float32, l.hidden)
		row := (start + r) * l.hidden
		for h := range out[r] {
			out[r][h] = l.element(data[(row+h)*l.size:])
		}
	}
	return out
}

// Segments decodes a soft-token tensor and splits its rows by
// segment_offsets: segment i is rows [offsets[i], offsets[i+1]).
func Segments(t *pb.Tensor) ([][][]float32, error) {
	rows, err := Rows(t)
	if err != nil {
		return nil, err
	}
	offsets := t.GetSegmentOffsets()
	if len(offsets) == 0 || offsets[0] != 0 || offsets[len(offsets)-1] != int64(len(rows)) {
		return nil, fmt.Errorf("segpress: segment_offsets %v must run from 0 to %d", offsets, len(rows))
	}
	for i := 1; i < len(offsets); i++ {
		if offsets[i-1] > offsets[i] {
			return nil, fmt.Errorf("segpress: segment_offsets %v decrease", offsets)
		}
	}
	segments := make([][][]float32, len(offsets)-1)
	for i := range segments {
		segments[i] = rows[offsets[i]:offsets[i+1]]
	}
	return segments, nil
}

// ContextRows decodes context i's soft tokens: rows [row_start, row_end) of
// resp.tensor, which holds every context's rows once, in request order. Only
// those rows are decoded.
func ContextRows(resp *pb.CompressResponse, i int) ([][]float32, error) {
	contexts := resp.GetContexts()
	if i < 0 || i >= len(contexts) {
		return nil, fmt.Errorf("segpress: no context %d in a response of %d", i, len(contexts))
	}
	l, err := layoutOf(resp.GetTensor())
	if err != nil {
		return nil, err
	}
	start, end := contexts[i].GetRowStart(), contexts[i].GetRowEnd()
	if start < 0 || start > end || end > int64(l.rows) {
		return nil, fmt.Errorf("segpress: context %d rows [%d, %d) are not within the tensor's %d rows",
			i, start, end, l.rows)
	}
	return l.decode(resp.GetTensor().GetData(), int(start), int(end)), nil
}

// elementDecoder returns the byte size of one element and its decoder.
func elementDecoder(dtype pb.DType) (int, func([]byte) float32) {
	switch dtype {
	case pb.DType_DTYPE_FLOAT32:
		return 4, func(b []byte) float32 { return math.Float32frombits(binary.LittleEndian.Uint32(b)) }
	case pb.DType_DTYPE_FLOAT16:
		return 2, func(b []byte) float32 { return float16(binary.LittleEndian.Uint16(b)) }
	case pb.DType_DTYPE_BFLOAT16:
		// bfloat16 is the top half of a float32.
		return 2, func(b []byte) float32 { return math.Float32frombits(uint32(binary.LittleEndian.Uint16(b)) << 16) }
	}
	return 0, nil
}

// float16 converts IEEE 754 half-precision bits to float32 (exactly).
func float16(h uint16) float32 {
	sign := uint32(h>>15) << 31
	exp := uint32(h>>10) & 0x1f
	frac := uint32(h) & 0x3ff
	switch {
	case exp == 0x1f: // infinity or NaN
		return math.Float32frombits(sign | 0xff<<23 | frac<<13)
	case exp != 0: // normal: rebias the exponent from 15 to 127
		return math.Float32frombits(sign | (exp+112)<<23 | frac<<13)
	default: // zero or subnormal: frac * 2^-24
		v := float32(frac) * (1.0 / (1 << 24))
		if sign != 0 {
			v = -v
		}
		return v
	}
}
