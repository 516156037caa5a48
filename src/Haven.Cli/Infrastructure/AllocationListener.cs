using System.Collections.Concurrent;
using System.Diagnostics.Tracing;

namespace Haven.Cli.Infrastructure;

/// <summary>
/// For memory work (<c>HAVEN_DEBUG_MEMORY=alloc</c>): samples the runtime's allocation ticks (one event per ~100 KB
/// allocated) and prints, at exit, which types and object sizes the allocations went to.
/// </summary>
internal sealed class AllocationListener : EventListener
{
    private readonly ConcurrentDictionary<string, (long Bytes, int Ticks)> _byType = new();

    protected override void OnEventSourceCreated(EventSource source)
    {
        if (source.Name == "Microsoft-Windows-DotNETRuntime")
        {
            EnableEvents(source, EventLevel.Verbose, (EventKeywords)0x1); // GC keyword: AllocationTick
        }
    }

    protected override void OnEventWritten(EventWrittenEventArgs e)
    {
        if (e.EventName != "GCAllocationTick_V4" || e.Payload is null)
        {
            return;
        }

        string type = e.Payload[e.PayloadNames!.IndexOf("TypeName")] as string ?? "?";
        long amount = Convert.ToInt64(e.Payload[e.PayloadNames.IndexOf("AllocationAmount64")]);
        long size = Convert.ToInt64(e.Payload[e.PayloadNames.IndexOf("ObjectSize")]);
        string key = size >= 85_000 ? $"{type} ({size >> 10} KiB objects)" : type;
        _byType.AddOrUpdate(key, (amount, 1), (_, v) => (v.Bytes + amount, v.Ticks + 1));
    }

    public void Print(TextWriter writer)
    {
        foreach (var (type, (bytes, ticks)) in _byType.OrderByDescending(kv => kv.Value.Bytes).Take(25))
        {
            writer.WriteLine($"alloc: {bytes >> 20,6} MiB  {ticks,6} ticks  {type}");
        }
    }
}
