using System.Buffers;
using System.Buffers.Binary;
using System.Runtime.CompilerServices;

namespace Haven.Repository.Model;

/// <summary>Thrown by <see cref="WireReader"/> when bytes do not parse; callers turn it into a message naming the object.</summary>
public sealed class MalformedDataException(string message) : Exception(message);

/// <summary>Appends Haven's binary encodings (little-endian integers, LEB128 varints, length-prefixed bytes).</summary>
public sealed class WireWriter
{
    private readonly ArrayBufferWriter<byte> _buffer;

    public WireWriter(int initialCapacity = 256) => _buffer = new ArrayBufferWriter<byte>(initialCapacity);

    public int Length => _buffer.WrittenCount;

    public ReadOnlySpan<byte> WrittenSpan => _buffer.WrittenSpan;

    public ReadOnlyMemory<byte> WrittenMemory => _buffer.WrittenMemory;

    public void Clear() => _buffer.Clear();

    public void Byte(byte value)
    {
        _buffer.GetSpan(1)[0] = value;
        _buffer.Advance(1);
    }

    public void Raw(ReadOnlySpan<byte> bytes) => _buffer.Write(bytes);

    public void UInt32(uint value)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(_buffer.GetSpan(4), value);
        _buffer.Advance(4);
    }

    public void VarUInt(ulong value)
    {
        var span = _buffer.GetSpan(10);
        int i = 0;
        while (value >= 0x80)
        {
            span[i++] = (byte)(value | 0x80);
            value >>= 7;
        }

        span[i++] = (byte)value;
        _buffer.Advance(i);
    }

    /// <summary>Zig-zag encoded signed varint (times before 1970 stay short).</summary>
    public void VarInt(long value) => VarUInt((ulong)((value << 1) ^ (value >> 63)));

    public void Bytes(ReadOnlySpan<byte> bytes)
    {
        VarUInt((ulong)bytes.Length);
        Raw(bytes);
    }

    public void Id(Haven.Core.ObjectId id)
    {
        id.CopyTo(_buffer.GetSpan(32));
        _buffer.Advance(32);
    }
}

/// <summary>
/// Reads what <see cref="WireWriter"/> wrote. Every read checks bounds and throws <see cref="MalformedDataException"/>;
/// lengths are checked against the bytes left before anything is allocated, so hostile input cannot ask for memory.
/// </summary>
public ref struct WireReader
{
    private readonly ReadOnlySpan<byte> _data;
    private int _pos;

    public WireReader(ReadOnlySpan<byte> data)
    {
        _data = data;
        _pos = 0;
    }

    public int Position => _pos;

    public int Remaining => _data.Length - _pos;

    public bool AtEnd => _pos >= _data.Length;

    public byte Byte()
    {
        Need(1);
        return _data[_pos++];
    }

    public ReadOnlySpan<byte> Raw(int length)
    {
        if (length < 0)
        {
            Fail("negative length");
        }

        Need(length);
        var span = _data.Slice(_pos, length);
        _pos += length;
        return span;
    }

    public uint UInt32()
    {
        Need(4);
        uint v = BinaryPrimitives.ReadUInt32LittleEndian(_data[_pos..]);
        _pos += 4;
        return v;
    }

    public ulong VarUInt()
    {
        ulong result = 0;
        for (int shift = 0; shift < 64; shift += 7)
        {
            byte b = Byte();
            result |= (ulong)(b & 0x7F) << shift;
            if ((b & 0x80) == 0)
            {
                return result;
            }
        }

        Fail("varint too long");
        return 0;
    }

    public long VarInt()
    {
        ulong v = VarUInt();
        return (long)(v >> 1) ^ -(long)(v & 1);
    }

    /// <summary>A varint that must fit an int and be at most <paramref name="max"/>.</summary>
    public int Count(int max)
    {
        ulong v = VarUInt();
        if (v > (ulong)max)
        {
            Fail($"count {v} exceeds {max}");
        }

        return (int)v;
    }

    public ReadOnlySpan<byte> Bytes()
    {
        ulong length = VarUInt();
        if (length > (ulong)Remaining)
        {
            Fail($"length {length} exceeds the {Remaining} bytes left");
        }

        return Raw((int)length);
    }

    public Haven.Core.ObjectId Id() => new(Raw(32));

    private readonly void Need(int count)
    {
        if (count > _data.Length - _pos)
        {
            Fail($"truncated at byte {_pos} (needs {count} more, has {_data.Length - _pos})");
        }
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    public static void Fail(string message) => throw new MalformedDataException(message);
}
