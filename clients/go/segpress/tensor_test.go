package segpress

import (
	"math"
	"reflect"
	"strings"
	"testing"

	pb "github.com/segpress/segpress/clients/go/segpressv1"
)

// Hand-built little-endian bytes, two rows of three elements per dtype,
// including each format's edge values.
func TestRowsDecodesEveryDtype(t *testing.T) {
	inf := float32(math.Inf(1))
	cases := []struct {
		dtype pb.DType
		data  []byte
		want  [][]float32
	}{
		{pb.DType_DTYPE_FLOAT32, []byte{
			0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0xc0, 0x00, 0x00, 0x00, 0x3f,
			0x00, 0x00, 0x80, 0x7f, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x80,
		}, [][]float32{{1, -2, 0.5}, {inf, math.Float32frombits(1), float32(math.Copysign(0, -1))}}},
		{pb.DType_DTYPE_FLOAT16, []byte{
			0x00, 0x3c, 0x00, 0xc0, 0x00, 0x38, // 1, -2, 0.5
			0xff, 0x7b, 0x01, 0x00, 0x00, 0x7c, // 65504 (largest), 2^-24 (smallest subnormal), +inf
		}, [][]float32{{1, -2, 0.5}, {65504, 1.0 / (1 << 24), inf}}},
		{pb.DType_DTYPE_BFLOAT16, []byte{
			0x80, 0x3f, 0x00, 0xc0, 0x00, 0x3f, // 1, -2, 0.5
			0x49, 0x40, 0x80, 0xff, 0x00, 0x00, // 3.140625, -inf, 0
		}, [][]float32{{1, -2, 0.5}, {3.140625, -inf, 0}}},
	}
	for _, c := range cases {
		t.Run(c.dtype.String(), func(t *testing.T) {
			got, err := Rows(&pb.Tensor{Dtype: c.dtype, Shape: []int64{2, 3}, Data: c.data})
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, c.want) || math.Signbit(float64(got[1][2])) != math.Signbit(float64(c.want[1][2])) {
				t.Fatalf("got %v, want %v", got, c.want)
			}
		})
	}
}

func TestFloat16NaN(t *testing.T) {
	if v := float16(0x7e00); !math.IsNaN(float64(v)) {
		t.Fatalf("0x7e00 decoded to %v, want NaN", v)
	}
}

func TestSegmentsSplitsRowsByOffsets(t *testing.T) {
	// Four one-wide bfloat16 rows 1, 2, 3, 4 in segments [0,1) [1,1) [1,4).
	tensor := &pb.Tensor{
		Dtype: pb.DType_DTYPE_BFLOAT16, Shape: []int64{4, 1},
		Data:           []byte{0x80, 0x3f, 0x00, 0x40, 0x40, 0x40, 0x80, 0x40},
		SegmentOffsets: []int64{0, 1, 1, 4},
	}
	got, err := Segments(tensor)
	if err != nil {
		t.Fatal(err)
	}
	want := [][][]float32{{{1}}, {}, {{2}, {3}, {4}}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

func TestContextRowsSlicesTheResponseTensor(t *testing.T) {
	// Three one-wide float16 rows 1, 2, 3: context 0 owns [0,1), context 1 [1,3).
	resp := &pb.CompressResponse{
		Tensor: &pb.Tensor{
			Dtype: pb.DType_DTYPE_FLOAT16, Shape: []int64{3, 1},
			Data:           []byte{0x00, 0x3c, 0x00, 0x40, 0x00, 0x42},
			SegmentOffsets: []int64{0, 1, 3},
		},
		Contexts: []*pb.CompressedContext{
			{RowStart: 0, RowEnd: 1, SegmentStart: 0, SegmentEnd: 1},
			{RowStart: 1, RowEnd: 3, SegmentStart: 1, SegmentEnd: 2},
		},
	}
	for i, want := range [][][]float32{{{1}}, {{2}, {3}}} {
		got, err := ContextRows(resp, i)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("context %d: got %v, want %v", i, got, want)
		}
	}
	if _, err := ContextRows(resp, 2); err == nil || !strings.Contains(err.Error(), "no context 2") {
		t.Fatalf("context 2: got error %v", err)
	}
	resp.Contexts[1].RowEnd = 4
	if _, err := ContextRows(resp, 1); err == nil || !strings.Contains(err.Error(), "not within") {
		t.Fatalf("rows past the end: got error %v", err)
	}
}

func TestMalformedTensorsAreErrors(t *testing.T) {
	f32 := pb.DType_DTYPE_FLOAT32
	cases := map[string]struct {
		tensor *pb.Tensor
		want   string
	}{
		"no dtype":     {&pb.Tensor{Shape: []int64{1, 1}, Data: make([]byte, 4)}, "unsupported tensor dtype"},
		"1-d shape":    {&pb.Tensor{Dtype: f32, Shape: []int64{2}, Data: make([]byte, 8)}, "not [rows, hidden]"},
		"short data":   {&pb.Tensor{Dtype: f32, Shape: []int64{2, 2}, Data: make([]byte, 15)}, "has 15 bytes"},
		"offsets end":  {&pb.Tensor{Dtype: f32, Shape: []int64{2, 1}, Data: make([]byte, 8), SegmentOffsets: []int64{0, 1}}, "from 0 to 2"},
		"offsets down": {&pb.Tensor{Dtype: f32, Shape: []int64{2, 1}, Data: make([]byte, 8), SegmentOffsets: []int64{0, 3, 2}}, "decrease"},
		"no offsets":   {&pb.Tensor{Dtype: f32, Shape: []int64{2, 1}, Data: make([]byte, 8)}, "from 0 to 2"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := Segments(c.tensor)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got error %v, want one containing %q", err, c.want)
			}
		})
	}
}
